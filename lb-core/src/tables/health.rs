//! The health probe state machine: a backend turns unhealthy after `numberOfProbes` consecutive
//! failed probes (the property of that name of an Azure Load Balancer health probe: the number of
//! probes without a response that stops new traffic to the endpoint) and healthy again after
//! [`RECOVERY_SUCCESSES`] consecutive successes, whatever `numberOfProbes` is.
//! The prober (off the packet path) reports results; a transition tells the caller to rebuild the
//! pool's Maglev table. Established flows are not touched: they keep their backend in the flow table.

/// A backend's health as the data path uses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Takes new flows.
    Up,
    /// Takes no new flows.
    Down,
}

/// What a probe result changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Nothing the data path needs to act on.
    None,
    /// The backend just went down: rebuild the pool's table without it.
    WentDown,
    /// The backend just came back: rebuild the pool's table with it.
    CameUp,
}

/// Consecutive successes that bring a backend back, whatever the probe's `numberOfProbes`: two in a
/// row, so that one lucky answer does not bring back a backend that is still failing.
pub const RECOVERY_SUCCESSES: u8 = 2;

/// One backend's probe history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeState {
    health: Health,
    /// Consecutive results that disagree with `health`.
    streak: u8,
    /// Consecutive failures that take a healthy backend out (`numberOfProbes`).
    threshold: u8,
}

impl ProbeState {
    /// A backend starts healthy (it takes new flows until its probe says otherwise) with the
    /// probe's `numberOfProbes` (at least 1).
    pub fn new(number_of_probes: u8) -> Self {
        ProbeState { health: Health::Up, streak: 0, threshold: number_of_probes.max(1) }
    }

    /// The same health and streak under a new `numberOfProbes` (a reconfiguration changed the
    /// probe): the backend keeps its state, the next transitions follow the new count.
    pub fn with_threshold(self, number_of_probes: u8) -> Self {
        ProbeState { threshold: number_of_probes.max(1), ..self }
    }

    /// Current health.
    pub fn health(&self) -> Health {
        self.health
    }

    /// Sets the health outright, with no threshold counting: for a verdict made elsewhere (a
    /// host agent applied `numberOfProbes` to its own probes and published the outcome). The
    /// streak starts again, so that results recorded after it count from here.
    pub fn set(&mut self, up: bool) -> Transition {
        self.streak = 0;
        match (self.health, up) {
            (Health::Down, true) => {
                self.health = Health::Up;
                Transition::CameUp
            }
            (Health::Up, false) => {
                self.health = Health::Down;
                Transition::WentDown
            }
            _ => Transition::None,
        }
    }

    /// Records one probe result.
    pub fn record(&mut self, success: bool) -> Transition {
        let agrees = matches!((self.health, success), (Health::Up, true) | (Health::Down, false));
        if agrees {
            self.streak = 0;
            return Transition::None;
        }
        self.streak = self.streak.saturating_add(1);
        let needed = match self.health {
            Health::Up => self.threshold,
            Health::Down => RECOVERY_SUCCESSES,
        };
        if self.streak < needed {
            return Transition::None;
        }
        self.streak = 0;
        match self.health {
            Health::Up => {
                self.health = Health::Down;
                Transition::WentDown
            }
            Health::Down => {
                self.health = Health::Up;
                Transition::CameUp
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backend_probed_every_15_s_goes_down_and_comes_back() {
        // numberOfProbes 2, probes every 15 s: VM2 fails at T+15 and T+30, recovers at T+45, T+60.
        let mut vm2 = ProbeState::new(2);
        assert_eq!(vm2.record(true), Transition::None); // T+0
        assert_eq!(vm2.record(false), Transition::None); // T+15: still receiving, needs 2 failures
        assert_eq!(vm2.health(), Health::Up);
        assert_eq!(vm2.record(false), Transition::WentDown); // T+30
        assert_eq!(vm2.health(), Health::Down);
        assert_eq!(vm2.record(true), Transition::None); // T+45: recovering, needs 2 successes
        assert_eq!(vm2.health(), Health::Down);
        assert_eq!(vm2.record(true), Transition::CameUp); // T+60
        assert_eq!(vm2.health(), Health::Up);
    }

    #[test]
    fn streaks_must_be_consecutive() {
        let mut b = ProbeState::new(3);
        for _ in 0..10 {
            assert_eq!(b.record(false), Transition::None);
            assert_eq!(b.record(false), Transition::None);
            assert_eq!(b.record(true), Transition::None, "a success breaks the failure streak");
        }
        assert_eq!(b.health(), Health::Up);
        assert_eq!(ProbeState::new(0).record(false), Transition::WentDown, "0 probes is treated as 1");
    }

    #[test]
    fn a_verdict_set_outright_skips_the_thresholds_and_restarts_the_streak() {
        let mut b = ProbeState::new(3);
        assert_eq!(b.set(true), Transition::None, "already up");
        assert_eq!(b.record(false), Transition::None);
        assert_eq!(b.set(false), Transition::WentDown, "one verdict, no counting");
        assert_eq!(b.health(), Health::Down);
        assert_eq!(b.set(false), Transition::None);
        assert_eq!(b.record(true), Transition::None, "the streak starts again after a verdict");
        assert_eq!(b.set(true), Transition::CameUp);
        assert_eq!(b.record(false), Transition::None);
        assert_eq!(b.record(false), Transition::None);
        assert_eq!(b.record(false), Transition::WentDown, "numberOfProbes failures after the verdict");
    }

    #[test]
    fn recovery_takes_two_successes_whatever_the_number_of_probes() {
        for n in [1u8, 2, 5, 100] {
            let mut b = ProbeState::new(n);
            for i in 1..n {
                assert_eq!(b.record(false), Transition::None, "failure {i} of {n}");
            }
            assert_eq!(b.record(false), Transition::WentDown, "{n} failures");
            assert_eq!(b.record(true), Transition::None, "one success is not enough ({n})");
            assert_eq!(b.record(true), Transition::CameUp, "two are ({n})");
        }
    }
}

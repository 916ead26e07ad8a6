//! What a MUX keeps across restarts for second chances: the pools it runs, and those it ran
//! before the last change with the time of the change (wall clock), in
//! `<stateDirectory>/mux-pools.json`.
//!
//! A MUX keeps the previous Maglev table of each pool for 10 minutes after a change, so that a
//! connection established before it and moved onto this MUX (another MUX died) finds its backend
//! (`lb_core::paths::mux::SECOND_CHANCE_SECONDS`). A MUX that restarts has lost that table; the
//! file gives it back: on start it recalls the pools it ran before the last change, if that change
//! is recent, or the pools it ran until it stopped, if it starts on others.
//!
//! Only what the tables depend on is kept: each pool's name and its members' addresses and
//! weights. A damaged or unreadable file is reported and replaced; it never stops the MUX.

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use lb_core::config::{Backend, LoadBalancer, Pool};
use lb_core::paths::mux::SECOND_CHANCE_SECONDS;
use serde::{Deserialize, Serialize};

const FILE: &str = "mux-pools.json";

/// One pool as its Maglev table sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct PoolMembers {
    name: String,
    /// (address, weight) of each member.
    members: Vec<(IpAddr, u32)>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Record {
    running: Vec<PoolMembers>,
    previous: Option<Vec<PoolMembers>>,
    /// When `previous` was replaced by `running` (seconds since the Unix epoch).
    replaced_at: u64,
}

/// The pools a MUX ran before, to recall: a load balancer with those pools only, and how many
/// seconds ago it was replaced.
pub struct Recalled {
    pub earlier: LoadBalancer,
    pub age: u32,
}

/// A MUX's record in its state directory.
pub struct History {
    path: PathBuf,
    record: Record,
}

fn pools_of(lb: &LoadBalancer) -> Vec<PoolMembers> {
    lb.pools
        .iter()
        .map(|p| PoolMembers {
            name: p.name.clone(),
            members: p.backends.iter().map(|b| (b.address, b.weight)).collect(),
        })
        .collect()
}

fn load_balancer_of(pools: &[PoolMembers]) -> LoadBalancer {
    let pools = pools
        .iter()
        .map(|p| Pool {
            name: p.name.clone(),
            backends: p
                .members
                .iter()
                .map(|&(address, weight)| Backend { name: address.to_string(), address, host: address, weight })
                .collect(),
            vni: 0,
        })
        .collect();
    LoadBalancer { pools, ..LoadBalancer::default() }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl History {
    /// Opens the record in `dir` for a MUX that starts on `lb`, writes what it runs now, and
    /// returns what to recall (None: nothing recent, or no record).
    pub fn start(dir: &Path, lb: &LoadBalancer) -> (History, Option<Recalled>) {
        let path = dir.join(FILE);
        let old = match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice::<Record>(&bytes)
                .map_err(|e| eprintln!("lb-dpdk: {}: unreadable, replaced: {e}", path.display()))
                .ok(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                eprintln!("lb-dpdk: {}: {e}", path.display());
                None
            }
        };
        let now = unix_now();
        let running = pools_of(lb);
        let record = match old {
            // The same pools as before the restart: the change before them, if any.
            Some(r) if r.running == running => r,
            // Other pools: those it ran until it stopped were replaced now.
            Some(r) => Record { running, previous: Some(r.running), replaced_at: now },
            None => Record { running, previous: None, replaced_at: now },
        };
        let mut history = History { path, record };
        history.save();
        let recalled = history.recall(now);
        (history, recalled)
    }

    fn recall(&self, now: u64) -> Option<Recalled> {
        let previous = self.record.previous.as_ref()?;
        let age = now.saturating_sub(self.record.replaced_at);
        (age < u64::from(SECOND_CHANCE_SECONDS))
            .then(|| Recalled { earlier: load_balancer_of(previous), age: age as u32 })
    }

    /// Records a reload to `lb` (a change of pools replaces the previous ones).
    pub fn reloaded(&mut self, lb: &LoadBalancer) {
        let running = pools_of(lb);
        if running == self.record.running {
            return;
        }
        let previous = std::mem::replace(&mut self.record.running, running);
        self.record.previous = Some(previous);
        self.record.replaced_at = unix_now();
        self.save();
    }

    /// Writes the record through a temporary file and a rename: a MUX killed while writing leaves
    /// the old record or the new one, never half of one.
    fn save(&mut self) {
        let tmp = self.path.with_extension("json.tmp");
        let write = || -> std::io::Result<()> {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(&serde_json::to_vec(&self.record).map_err(std::io::Error::other)?)?;
            f.sync_all()?;
            fs::rename(&tmp, &self.path)
        };
        if let Err(e) = write() {
            eprintln!("lb-dpdk: {}: {e} (second chances after a restart need it)", self.path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_fixtures::web_app;

    fn temp_dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("lb-history-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_restart_recalls_the_pools_before_the_last_change() {
        let dir = temp_dir("restart");
        let before = web_app();
        let mut after = web_app();
        after.pools[0].backends.pop();
        let (mut h, recalled) = History::start(&dir, &before);
        assert!(recalled.is_none(), "a first start has nothing to recall");
        h.reloaded(&after);
        // Restarted on what it ran: the pools before the reload.
        let (_, recalled) = History::start(&dir, &after);
        let r = recalled.expect("recalled");
        assert_eq!(pools_of(&r.earlier), pools_of(&before));
        assert!(r.age < 5);
        // Restarted on other pools: those it ran until it stopped.
        let (_, recalled) = History::start(&dir, &before);
        assert_eq!(pools_of(&recalled.expect("recalled").earlier), pools_of(&after));
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_old_change_or_a_damaged_file_recalls_nothing() {
        let dir = temp_dir("old");
        let lb = web_app();
        let old = Record { running: pools_of(&lb), previous: Some(Vec::new()), replaced_at: unix_now() - 3600 };
        fs::write(dir.join(FILE), serde_json::to_vec(&old).unwrap()).unwrap();
        assert!(History::start(&dir, &lb).1.is_none(), "an hour ago is outside the window");
        fs::write(dir.join(FILE), b"{not json").unwrap();
        let (_, recalled) = History::start(&dir, &lb);
        assert!(recalled.is_none());
        let kept: Record = serde_json::from_slice(&fs::read(dir.join(FILE)).unwrap()).unwrap();
        assert_eq!(kept.running, pools_of(&lb), "the damaged record was replaced");
        let _ = fs::remove_dir_all(&dir);
    }
}

/*
 * What the Rust side of the DPDK port binds (bindgen reads this file): the DPDK headers it uses,
 * and the shim's functions. Most of DPDK's fast path is `static inline` in its headers, so it has
 * no symbol to link against; shim.c wraps each such function the program needs in a real one.
 */
#ifndef LB_DPDK_SHIM_H
#define LB_DPDK_SHIM_H

#include <stdint.h>

#include <rte_cycles.h>
#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_ethdev.h>
#include <rte_launch.h>
#include <rte_lcore.h>
#include <rte_mbuf.h>
#include <rte_mempool.h>

/* rte_eth_rx_burst: up to n frames from one rx queue. */
uint16_t lb_rx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n);
/* rte_eth_tx_burst: the first (returned) of the n frames were queued; the caller owns the rest. */
uint16_t lb_tx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n);
/* rte_pktmbuf_alloc: a reset mbuf (data_off = RTE_PKTMBUF_HEADROOM, empty), or NULL. */
struct rte_mbuf *lb_pktmbuf_alloc(struct rte_mempool *mp);
/* rte_pktmbuf_free (NULL is fine). */
void lb_pktmbuf_free(struct rte_mbuf *m);
/* rte_pktmbuf_free_bulk. */
void lb_pktmbuf_free_bulk(struct rte_mbuf **pkts, unsigned int n);
/*
 * A copy of the frame in m (any number of segments, direct or not) in one fresh, direct,
 * single-segment mbuf from mp; m is freed either way. NULL if no mbuf was free or the frame does
 * not fit one.
 */
struct rte_mbuf *lb_pktmbuf_flatten(struct rte_mbuf *m, struct rte_mempool *mp);
/* rte_errno (a per-thread variable behind a macro). */
int lb_errno(void);
/* rte_lcore_id: this thread's lcore, or LCORE_ID_ANY for an unregistered thread. */
unsigned int lb_lcore_id(void);
/* rte_get_tsc_cycles (the TSC; rte_get_tsc_hz() ticks a second). */
uint64_t lb_tsc(void);
/* RTE_ETH_RSS_IP | RTE_ETH_RSS_TCP | RTE_ETH_RSS_UDP: the hash types the program asks for. */
uint64_t lb_rss_hf(void);
/* RTE_ETH_TX_OFFLOAD_MBUF_FAST_FREE. */
uint64_t lb_tx_offload_fast_free(void);

#endif

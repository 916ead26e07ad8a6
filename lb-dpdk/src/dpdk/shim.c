/*
 * Real functions around DPDK's static inline ones (see shim.h). Each is a one-line wrapper, except
 * lb_pktmbuf_flatten.
 */
#include <string.h>

#include "shim.h"

uint16_t lb_rx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n)
{
	return rte_eth_rx_burst(port, queue, pkts, n);
}

uint16_t lb_tx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n)
{
	return rte_eth_tx_burst(port, queue, pkts, n);
}

struct rte_mbuf *lb_pktmbuf_alloc(struct rte_mempool *mp)
{
	return rte_pktmbuf_alloc(mp);
}

void lb_pktmbuf_free(struct rte_mbuf *m)
{
	rte_pktmbuf_free(m);
}

void lb_pktmbuf_free_bulk(struct rte_mbuf **pkts, unsigned int n)
{
	rte_pktmbuf_free_bulk(pkts, n);
}

struct rte_mbuf *lb_pktmbuf_flatten(struct rte_mbuf *m, struct rte_mempool *mp)
{
	struct rte_mbuf *n = rte_pktmbuf_alloc(mp);
	uint32_t len = rte_pktmbuf_pkt_len(m);

	if (n != NULL && len <= rte_pktmbuf_tailroom(n)) {
		char *dst = rte_pktmbuf_mtod(n, char *);
		/* Points into m when the bytes are contiguous there, else copies them to dst. */
		const void *src = rte_pktmbuf_read(m, 0, len, dst);

		if (src != NULL) {
			if (src != dst)
				memcpy(dst, src, len);
			n->data_len = (uint16_t)len;
			n->pkt_len = len;
			rte_pktmbuf_free(m);
			return n;
		}
	}
	rte_pktmbuf_free(n);
	rte_pktmbuf_free(m);
	return NULL;
}

int lb_errno(void)
{
	return rte_errno;
}

unsigned int lb_lcore_id(void)
{
	return rte_lcore_id();
}

uint64_t lb_tsc(void)
{
	return rte_get_tsc_cycles();
}

uint64_t lb_rss_hf(void)
{
	return RTE_ETH_RSS_IP | RTE_ETH_RSS_TCP | RTE_ETH_RSS_UDP;
}

uint64_t lb_tx_offload_fast_free(void)
{
	return RTE_ETH_TX_OFFLOAD_MBUF_FAST_FREE;
}

/*
 * A MUX driven through the C ABI: a TCP SYN to the VIP leaves VxLAN-encapsulated to one of the
 * pool's hosts with the inner frame untouched; the flow sticks; a frame to no VIP is dropped as
 * no_vip; counters; probes take a backend out of new flows; an update moves new flows to a new pool
 * while established ones stay; expiry empties the flow table.
 */
#include "lbtest.h"

static const uint32_t HOSTS[3] = {0xac100a14u, 0xac100a15u, 0xac100a16u}; /* 172.16.10.20-22 */

static int host_index(uint32_t h) {
    int i;
    for (i = 0; i < 3; i++) {
        if (HOSTS[i] == h) {
            return i;
        }
    }
    return -1;
}

/* Sends a SYN from client port `sport` at `now`; returns the outer destination it went to. */
static uint32_t syn_host(lb_instance *mux, uint16_t sport, uint32_t now, uint32_t vni) {
    frame_buf fb;
    uint8_t copy[BUF_SIZE];
    lb_verdict v;
    size_t len;
    client_tcp(&fb, VIP, sport, 80, TCP_SYN);
    len = fb.f.len;
    memcpy(copy, fb.buf + HEADROOM, len);
    v = process_one(mux, &fb, now, LB_DIRECTION_AUTO);
    CHECK_EQ(v.action, LB_ACTION_TRANSMIT);
    CHECK_EQ(fb.f.start, HEADROOM - OUTER_V4);
    check_vxlan(fb.buf + fb.f.start, fb.f.len, vni, copy, len);
    return outer_dst(fb.buf + fb.f.start);
}

int main(void) {
    lb_instance *mux = new_instance(MUX_NODE_JSON);
    lb_counters c;
    frame_buf fb, fb2;
    uint8_t inner[BUF_SIZE];
    lb_verdict v, vs[2];
    lb_frame frames[2];
    size_t len, i;
    uint32_t first_host, h, now = 1000;
    int seen[3] = {0, 0, 0}, moved = 0;
    char err[256];

    CHECK_EQ(lb_instance_role(mux), LB_ROLE_MUX);

    /* A SYN to the VIP: TRANSMIT, outer headers in the 50 bytes of headroom before it. */
    client_tcp(&fb, VIP, 40000, 80, TCP_SYN);
    len = fb.f.len;
    CHECK_EQ(len, 54);
    memcpy(inner, fb.buf + HEADROOM, len);
    v = process_one(mux, &fb, now, LB_DIRECTION_AUTO);
    CHECK_EQ(v.action, LB_ACTION_TRANSMIT);
    CHECK_EQ(v.reason, 0);
    CHECK_EQ(v.backend, 0);
    CHECK_EQ(fb.f.start, HEADROOM - 50);
    CHECK_EQ(fb.f.len, len + 50);
    CHECK_EQ(rd16(fb.buf + fb.f.start + 12), 0x0800);
    check_vxlan(fb.buf + fb.f.start, fb.f.len, 5001, inner, len);
    first_host = outer_dst(fb.buf + fb.f.start);
    CHECK(host_index(first_host) >= 0);
    /* Nothing before the outer headers was touched. */
    for (i = 0; i < fb.f.start; i++) {
        CHECK_EQ(fb.buf[i], 0xee);
    }
    pass("syn_to_vip_is_encapsulated");

    /* The same flow again (an ACK now): the same host. */
    client_tcp(&fb, VIP, 40000, 80, TCP_ACK);
    v = process_one(mux, &fb, now, LB_DIRECTION_AUTO);
    CHECK_EQ(v.action, LB_ACTION_TRANSMIT);
    CHECK_EQ(outer_dst(fb.buf + fb.f.start), first_host);
    pass("same_flow_same_host");

    /* No VIP: dropped, reason no_vip. */
    client_tcp(&fb, NOT_A_VIP, 40001, 80, TCP_SYN);
    memcpy(inner, fb.buf + HEADROOM, fb.f.len);
    v = process_one(mux, &fb, now, LB_DIRECTION_AUTO);
    CHECK_EQ(v.action, LB_ACTION_DROP);
    CHECK_STR(lb_drop_reason_name(LB_ROLE_MUX, v.reason), "no_vip");
    CHECK_EQ(fb.f.start, HEADROOM); /* a dropped frame's range is left as it was */
    CHECK_EQ(fb.f.len, 54);
    /* No rule for the port: no_rule. */
    client_tcp(&fb, VIP, 40001, 443, TCP_SYN);
    v = process_one(mux, &fb, now, LB_DIRECTION_AUTO);
    CHECK_EQ(v.action, LB_ACTION_DROP);
    CHECK_STR(lb_drop_reason_name(LB_ROLE_MUX, v.reason), "no_rule");
    pass("no_vip_is_dropped");

    /* A burst of two: each frame gets its own verdict. */
    client_tcp(&fb, VIP, 40002, 80, TCP_SYN);
    client_tcp(&fb2, NOT_A_VIP, 40002, 80, TCP_SYN);
    frames[0] = fb.f;
    frames[1] = fb2.f;
    CHECK_EQ(lb_process_burst(mux, frames, 2, now, LB_DIRECTION_AUTO, vs), LB_RESULT_OK);
    CHECK_EQ(vs[0].action, LB_ACTION_TRANSMIT);
    CHECK_EQ(frames[0].start, HEADROOM - 50);
    CHECK_EQ(vs[1].action, LB_ACTION_DROP);
    CHECK_STR(lb_drop_reason_name(LB_ROLE_MUX, vs[1].reason), "no_vip");
    pass("burst");

    /* Counters: 3 frames forwarded (54 bytes each, as received), 2 new flows, 2 live flows. */
    CHECK_EQ(lb_counters_get(mux, &c), LB_RESULT_OK);
    CHECK_EQ(c.forwarded, 3);
    CHECK_EQ(c.forwarded_bytes, 3 * 54);
    CHECK_EQ(c.new_flows, 2);
    CHECK_EQ(c.flows, 2);
    CHECK_EQ(c.drop_reasons, 8);
    CHECK_EQ(c.drops[1], 2); /* no_vip */
    CHECK_EQ(c.drops[2], 1); /* no_rule */
    CHECK_EQ(c.drops[0] + c.drops[3] + c.drops[4] + c.drops[5] + c.drops[6] + c.drops[7], 0);
    CHECK_EQ(c.icmp_too_big, 0);
    for (i = c.drop_reasons; i < LB_MAX_DROP_REASONS; i++) {
        CHECK_EQ(c.drops[i], 0);
    }
    CHECK_EQ(c.snat_ports_in_use, 0);
    CHECK_EQ(c.tcp_resets, 0);
    for (i = 0; i < c.drop_reasons; i++) {
        CHECK(lb_drop_reason_name(LB_ROLE_MUX, (uint32_t)i) != NULL);
    }
    CHECK(lb_drop_reason_name(LB_ROLE_MUX, c.drop_reasons) == NULL);
    pass("counters");

    /* New flows spread over the three hosts. */
    for (i = 0; i < 64; i++) {
        int k = host_index(syn_host(mux, (uint16_t)(41000 + i), now, 5001));
        CHECK(k >= 0);
        seen[k]++;
    }
    CHECK(seen[0] > 0 && seen[1] > 0 && seen[2] > 0);
    pass("new_flows_spread");

    /* Two failed probes (numberOfProbes 2) take web1 (pool 0, member 1) down: new flows avoid it. */
    CHECK_EQ(lb_backend_up(mux, 0, 1), 1);
    CHECK_EQ(lb_report_probe(mux, 0, 0, 1, false), LB_RESULT_OK);
    CHECK_EQ(lb_backend_up(mux, 0, 1), 1);
    CHECK_EQ(lb_report_probe(mux, 0, 0, 1, false), LB_RESULT_OK);
    CHECK_EQ(lb_backend_up(mux, 0, 1), 0);
    CHECK_EQ(lb_backend_up(mux, 0, 0), 1);
    for (i = 0; i < 64; i++) {
        h = syn_host(mux, (uint16_t)(42000 + i), now, 5001);
        CHECK(h == HOSTS[0] || h == HOSTS[2]);
    }
    /* Two good ones bring it back. */
    CHECK_EQ(lb_report_probe(mux, 0, 0, 1, true), LB_RESULT_OK);
    CHECK_EQ(lb_report_probe(mux, 0, 0, 1, true), LB_RESULT_OK);
    CHECK_EQ(lb_backend_up(mux, 0, 1), 1);
    memset(seen, 0, sizeof seen);
    for (i = 0; i < 64; i++) {
        seen[host_index(syn_host(mux, (uint16_t)(43000 + i), now, 5001))]++;
    }
    CHECK(seen[1] > 0);
    pass("probes");

    /* Update: the rule now points at a new pool (VNI 6001, hosts 172.16.20.30-31). */
    CHECK_EQ(lb_update(mux, LB_JSON_NEW_POOL, strlen(LB_JSON_NEW_POOL), err, sizeof err), LB_RESULT_OK);
    /* The established flow keeps its host and VNI. */
    client_tcp(&fb, VIP, 40000, 80, TCP_ACK);
    memcpy(inner, fb.buf + HEADROOM, fb.f.len);
    len = fb.f.len;
    v = process_one(mux, &fb, now, LB_DIRECTION_AUTO);
    CHECK_EQ(v.action, LB_ACTION_TRANSMIT);
    check_vxlan(fb.buf + fb.f.start, fb.f.len, 5001, inner, len);
    CHECK_EQ(outer_dst(fb.buf + fb.f.start), first_host);
    /* New flows go to the new pool. */
    for (i = 0; i < 32; i++) {
        h = syn_host(mux, (uint16_t)(44000 + i), now, 6001);
        CHECK(h == ip4(172, 16, 20, 30) || h == ip4(172, 16, 20, 31));
        moved += h == ip4(172, 16, 20, 31);
    }
    CHECK(moved > 0 && moved < 32);
    /* Pool 0 is now "Blue": two members, no third; and no rule probes it any more, so a probe
     * result names nothing, even for a member it has. */
    CHECK_EQ(lb_backend_up(mux, 0, 1), 1);
    CHECK_EQ(lb_backend_up(mux, 0, 2), -1);
    CHECK_EQ(lb_report_probe(mux, 0, 0, 1, false), LB_RESULT_BAD_ARGUMENT);
    CHECK_EQ(lb_report_probe(mux, 0, 0, 2, false), LB_RESULT_BAD_ARGUMENT);
    pass("update");

    /* Expiry: past every idle timeout (4 minutes), a full sweep empties the flow table. */
    CHECK_EQ(lb_counters_get(mux, &c), LB_RESULT_OK);
    CHECK(c.flows > 100);
    CHECK_EQ(lb_expire(mux, now + 10, 1u << 20), LB_RESULT_OK);
    CHECK_EQ(lb_counters_get(mux, &c), LB_RESULT_OK);
    CHECK(c.flows > 100);
    for (i = 0; i < 4; i++) {
        CHECK_EQ(lb_expire(mux, now + 3600, 1024), LB_RESULT_OK); /* in slices, as a poll loop would */
    }
    CHECK_EQ(lb_expire(mux, now + 3600, (size_t)-1), LB_RESULT_OK);
    CHECK_EQ(lb_counters_get(mux, &c), LB_RESULT_OK);
    CHECK_EQ(c.flows, 0);
    pass("expire");

    lb_instance_free(mux);
    done();
    return 0;
}

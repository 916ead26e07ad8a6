/*
 * Every error path of the C ABI: NULL arguments on every function (LB_RESULT_NULL_ARGUMENT, no
 * crash), bad JSON and invalid configurations (with readable messages, truncated safely), frames
 * outside their buffers or without headroom, unknown directions, bad probe indices, the static
 * strings. argv[1] is the version the library must report.
 */
#include "lbtest.h"

/* Node files with one thing wrong (what the message must name follows each). */
#define MUX_NODE_WITH(extra) NODE_HEAD("mux", "172.16.5.10") extra "\"loadBalancer\":" LB_JSON "}"

/* Fills `err` with 'X', so that what the library wrote (and did not write) shows. */
static void fill(char *err, size_t n) {
    memset(err, 'X', n);
}

/* Creates from `json` expecting `want`; leaves the message in `err` (256 bytes). */
static void expect_new(const char *json, size_t len, lb_result want, char *err) {
    static char dummy;
    lb_instance *inst = (lb_instance *)(void *)&dummy; /* not NULL: the library must clear it */
    fill(err, 256);
    CHECK_EQ(lb_instance_new(json, len, &inst, err, 256), want);
    CHECK(inst == NULL);
    CHECK(memchr(err, 0, 256) != NULL);
    CHECK(strlen(err) > 0);
}

static void expect_new_mentions(const char *json, lb_result want, const char *needle) {
    char err[256];
    expect_new(json, strlen(json), want, err);
    if (strstr(err, needle) == NULL) {
        fprintf(stderr, "message \"%s\" does not name \"%s\"\n", err, needle);
        exit(1);
    }
}

int main(int argc, char **argv) {
    static const char bad_json[] = "{\"role\": \"mux\", oops}";
    static const char not_utf8[] = "{\"role\": \"\xff\xfe\"}";
    lb_instance *mux = new_instance(MUX_NODE_JSON), *host = new_instance(HOST_NODE_JSON), *out = NULL;
    char err[256], full[256];
    frame_buf fb, fb2;
    lb_frame frames[2];
    lb_verdict v, vs[2];
    lb_counters c;
    size_t cut;
    const char *p;

    /* --- static strings ----------------------------------------------------------------------- */
    CHECK(argc == 2);
    CHECK_STR(lb_version(), argv[1]);
    CHECK_STR(lb_result_name(LB_RESULT_OK), "ok");
    CHECK_STR(lb_result_name(LB_RESULT_NULL_ARGUMENT), "a required argument is NULL");
    CHECK_STR(lb_result_name(12345), "unknown result code");
    CHECK_STR(lb_drop_reason_name(LB_ROLE_MUX, 0), "malformed");
    CHECK_STR(lb_drop_reason_name(LB_ROLE_MUX, 5), "encap");
    CHECK_STR(lb_drop_reason_name(LB_ROLE_MUX, 7), "no_next_hop");
    CHECK(lb_drop_reason_name(LB_ROLE_MUX, 8) == NULL);
    CHECK_STR(lb_drop_reason_name(LB_ROLE_HOST, 8), "icmp_untranslated");
    CHECK(lb_drop_reason_name(LB_ROLE_HOST, LB_MAX_DROP_REASONS) == NULL);
    CHECK(lb_drop_reason_name(0, 0) == NULL);
    CHECK(lb_drop_reason_name(3, 0) == NULL);
    CHECK(lb_drop_reason_name(LB_ROLE_MUX, 0xffffffffu) == NULL);
    pass("static_strings");

    /* --- NULL arguments, every function ------------------------------------------------------- */
    out = (lb_instance *)(void *)err; /* not NULL: the library must clear it */
    CHECK_EQ(lb_instance_new(NULL, 10, &out, err, sizeof err), LB_RESULT_NULL_ARGUMENT);
    CHECK(out == NULL);
    CHECK_EQ(lb_instance_new(NULL, 0, &out, NULL, 0), LB_RESULT_NULL_ARGUMENT);
    /* Every failure leaves a message, those without one of their own the result's description. */
    fill(err, sizeof err);
    CHECK_EQ(lb_instance_new(MUX_NODE_JSON, strlen(MUX_NODE_JSON), NULL, err, sizeof err), LB_RESULT_NULL_ARGUMENT);
    CHECK_STR(err, "a required argument is NULL");
    lb_instance_free(NULL);
    CHECK_EQ(lb_instance_role(NULL), 0);
    client_tcp(&fb, VIP, 1000, 80, TCP_SYN);
    CHECK_EQ(lb_process_burst(NULL, &fb.f, 1, 0, LB_DIRECTION_AUTO, &v), LB_RESULT_NULL_ARGUMENT);
    CHECK_EQ(lb_process_burst(NULL, &fb.f, 1, 0, 77, &v), LB_RESULT_NULL_ARGUMENT); /* NULL is checked first */
    CHECK_EQ(lb_process_burst(mux, NULL, 1, 0, LB_DIRECTION_AUTO, &v), LB_RESULT_NULL_ARGUMENT);
    CHECK_EQ(lb_process_burst(mux, NULL, 1, 0, 77, &v), LB_RESULT_NULL_ARGUMENT); /* before the direction */
    CHECK_EQ(lb_process_burst(mux, &fb.f, 1, 0, LB_DIRECTION_AUTO, NULL), LB_RESULT_NULL_ARGUMENT);
    CHECK_EQ(fb.f.start, HEADROOM); /* nothing was processed */
    CHECK_EQ(lb_process_burst(mux, NULL, 0, 0, LB_DIRECTION_AUTO, NULL), LB_RESULT_OK); /* n = 0 */
    CHECK_EQ(lb_report_probe(NULL, 0, 0, 0, true), LB_RESULT_NULL_ARGUMENT);
    CHECK_EQ(lb_backend_up(NULL, 0, 0), -1);
    fill(err, sizeof err);
    CHECK_EQ(lb_update(NULL, LB_JSON, strlen(LB_JSON), err, sizeof err), LB_RESULT_NULL_ARGUMENT);
    CHECK_STR(err, "a required argument is NULL");
    CHECK_EQ(lb_update(mux, NULL, 5, err, sizeof err), LB_RESULT_NULL_ARGUMENT);
    CHECK_EQ(lb_expire(NULL, 0, 8), LB_RESULT_NULL_ARGUMENT);
    CHECK_EQ(lb_counters_get(NULL, &c), LB_RESULT_NULL_ARGUMENT);
    CHECK_EQ(lb_counters_get(mux, NULL), LB_RESULT_NULL_ARGUMENT);
    CHECK_EQ(lb_counters_get(NULL, NULL), LB_RESULT_NULL_ARGUMENT);
    /* A NULL buffer in a burst: that frame is dropped (malformed), the other one is processed. */
    client_tcp(&fb, VIP, 1001, 80, TCP_SYN);
    frames[0] = fb.f;
    frames[0].buf = NULL;
    frames[1] = fb.f;
    CHECK_EQ(lb_process_burst(mux, frames, 2, 0, LB_DIRECTION_AUTO, vs), LB_RESULT_NULL_ARGUMENT);
    CHECK_EQ(vs[0].action, LB_ACTION_DROP);
    CHECK_STR(lb_drop_reason_name(LB_ROLE_MUX, vs[0].reason), "malformed");
    CHECK_EQ(vs[1].action, LB_ACTION_TRANSMIT);
    CHECK_EQ(frames[1].start, HEADROOM - OUTER_V4);
    pass("null_arguments");

    /* --- bad JSON ----------------------------------------------------------------------------- */
    expect_new(bad_json, strlen(bad_json), LB_RESULT_BAD_JSON, full);
    CHECK(strstr(full, "line 1") != NULL);
    /* NULL err is fine. */
    CHECK_EQ(lb_instance_new(bad_json, strlen(bad_json), &out, NULL, 100), LB_RESULT_BAD_JSON);
    CHECK(out == NULL);
    /* A short buffer gets a NUL-terminated prefix and nothing past it. */
    fill(err, sizeof err);
    CHECK_EQ(lb_instance_new(bad_json, strlen(bad_json), &out, err, 8), LB_RESULT_BAD_JSON);
    CHECK_EQ(strlen(err), 7);
    CHECK(strncmp(err, full, 7) == 0);
    CHECK_EQ(err[8], 'X');
    /* err_len 1: just the NUL. */
    fill(err, sizeof err);
    CHECK_EQ(lb_instance_new(bad_json, strlen(bad_json), &out, err, 1), LB_RESULT_BAD_JSON);
    CHECK_EQ(err[0], 0);
    CHECK_EQ(err[1], 'X');
    /* err_len 0: nothing at all. */
    fill(err, sizeof err);
    CHECK_EQ(lb_instance_new(bad_json, strlen(bad_json), &out, err, 0), LB_RESULT_BAD_JSON);
    CHECK_EQ(err[0], 'X');
    /* Only json_len bytes count (the text need not be NUL-terminated): a prefix is bad JSON. */
    expect_new(MUX_NODE_JSON, 20, LB_RESULT_BAD_JSON, err);
    expect_new(MUX_NODE_JSON, 0, LB_RESULT_BAD_JSON, err);
    /* Not UTF-8. */
    expect_new(not_utf8, strlen(not_utf8), LB_RESULT_BAD_JSON, err);
    CHECK(strstr(err, "UTF-8") != NULL);
    /* JSON, but not of the expected shape. */
    expect_new_mentions("[1, 2, 3]", LB_RESULT_BAD_JSON, "<json>");
    expect_new_mentions(NODE_HEAD("router", "172.16.5.10") "\"loadBalancer\":" LB_JSON "}", LB_RESULT_BAD_JSON,
                        "router");
    expect_new_mentions(MUX_NODE_WITH("\"colour\":\"blue\","), LB_RESULT_BAD_JSON, "colour");
    expect_new_mentions(NODE_HEAD("mux", "172.16.5.10") "\"loadBalancer\":{\"properties\":{}}}", LB_RESULT_BAD_JSON,
                        "name");
    expect_new_mentions(MUX_NODE_WITH("\"ttl\":64,\"maglevSize\":251,"), LB_RESULT_BAD_JSON, "maglevSize"); /* twice */
    pass("bad_json");

    /* --- invalid configurations: the message names the field ---------------------------------- */
    expect_new_mentions(
        "{\"role\":\"mux\",\"mac\":\"02:00:00:00:05\",\"gatewayMac\":\"02:00:00:00:00:01\",\"underlay\":\"172.16.5.10\","
        "\"loadBalancer\":" LB_JSON "}",
        LB_RESULT_BAD_CONFIG, "mac");
    expect_new_mentions(
        "{\"role\":\"mux\",\"mac\":\"02:00:00:00:05:0a\",\"gatewayMac\":\"02:00:00:00:00:01\",\"underlay\":\"172.16.5.10\","
        "\"flowCapacity\":0,\"loadBalancer\":" LB_JSON "}",
        LB_RESULT_BAD_CONFIG, "flowCapacity");
    expect_new_mentions(
        "{\"role\":\"host\",\"mac\":\"02:00:00:00:05:0a\",\"gatewayMac\":\"02:00:00:00:00:01\",\"underlay\":\"172.16.10.21\","
        "\"loadBalancer\":" LB_JSON "}",
        LB_RESULT_BAD_CONFIG, "muxes");
    expect_new_mentions(
        "{\"role\":\"mux\",\"mac\":\"02:00:00:00:05:0a\",\"gatewayMac\":\"02:00:00:00:00:01\",\"underlay\":\"172.16.5.10\","
        "\"loadBalancerFile\":\"no-such-lb.json\"}",
        LB_RESULT_BAD_CONFIG, "no-such-lb.json");
    expect_new_mentions(
        "{\"role\":\"mux\",\"mac\":\"02:00:00:00:05:0a\",\"gatewayMac\":\"02:00:00:00:00:01\",\"underlay\":\"172.16.5.10\"}",
        LB_RESULT_BAD_CONFIG, "loadBalancer");
    /* In the load balancer: an idle timeout out of range, a reference to nothing, a bad address. */
    {
        static const char *cases[][3] = {
            {"\"backendPort\":8080", "\"backendPort\":8080,\"idleTimeoutInMinutes\":1", "idleTimeoutInMinutes"},
            {"probes/Http\"", "probes/Nope\"", "probe"},
            {"\"10.0.1.5\"", "\"10.0.1.500\"", "ipAddress"},
            {"\"frontendPort\":80", "\"frontendPort\":70000", "frontendPort"},
            {"\"Tcp\",\"frontendPort\"", "\"Sctp\",\"frontendPort\"", "protocol"},
        };
        size_t i;
        for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
            static char json[8192], lb[4096];
            const char *at = strstr(LB_JSON, cases[i][0]);
            CHECK(at != NULL);
            snprintf(lb, sizeof lb, "%.*s%s%s", (int)(at - LB_JSON), LB_JSON, cases[i][1],
                     at + strlen(cases[i][0]));
            snprintf(json, sizeof json, "%s\"loadBalancer\":%s}", NODE_HEAD("mux", "172.16.5.10"), lb);
            expect_new_mentions(json, LB_RESULT_BAD_CONFIG, cases[i][2]);
            /* lb_update refuses it alike, and the instance keeps its configuration. */
            fill(err, sizeof err);
            CHECK_EQ(lb_update(mux, lb, strlen(lb), err, sizeof err), LB_RESULT_BAD_CONFIG);
            CHECK(strstr(err, cases[i][2]) != NULL);
        }
    }
    /* A message is cut on a UTF-8 character boundary: never half a character. */
    {
        static const char bad_ip[] = NODE_HEAD("mux", "172.16.5.10") "\"loadBalancer\":{\"name\":\"x\",\"properties\":{"
                                     "\"frontendIPConfigurations\":[{\"name\":\"F\",\"properties\":{\"privateIPAddress\":"
                                     "\"\xc3\xa9t\xc3\xa9\"}}]}}}";
        expect_new(bad_ip, strlen(bad_ip), LB_RESULT_BAD_CONFIG, full);
        p = strstr(full, "\xc3\xa9");
        CHECK(p != NULL);
        cut = (size_t)(p - full);
        fill(err, sizeof err);
        CHECK_EQ(lb_instance_new(bad_ip, strlen(bad_ip), &out, err, cut + 2), LB_RESULT_BAD_CONFIG);
        CHECK_EQ(strlen(err), cut); /* the first byte of the 2-byte character would have fitted */
        CHECK(strncmp(err, full, cut) == 0);
        fill(err, sizeof err);
        CHECK_EQ(lb_instance_new(bad_ip, strlen(bad_ip), &out, err, cut + 3), LB_RESULT_BAD_CONFIG);
        CHECK_EQ(strlen(err), cut + 2);
    }
    pass("bad_config");

    /* --- lb_update errors --------------------------------------------------------------------- */
    fill(err, sizeof err);
    CHECK_EQ(lb_update(mux, "{", 1, err, sizeof err), LB_RESULT_BAD_JSON);
    CHECK(strlen(err) > 0 && strlen(err) < sizeof err);
    CHECK_EQ(lb_update(mux, not_utf8, strlen(not_utf8), err, sizeof err), LB_RESULT_BAD_JSON);
    CHECK_EQ(lb_update(mux, "{\"properties\":{}}", 17, err, 0), LB_RESULT_BAD_JSON);
    /* A node file is not a load balancer. */
    CHECK_EQ(lb_update(mux, MUX_NODE_JSON, strlen(MUX_NODE_JSON), err, sizeof err), LB_RESULT_BAD_JSON);
    /* After all these refusals the MUX still has its configuration: a SYN to the VIP goes out. */
    client_tcp(&fb, VIP, 1002, 80, TCP_SYN);
    v = process_one(mux, &fb, 0, LB_DIRECTION_AUTO);
    CHECK_EQ(v.action, LB_ACTION_TRANSMIT);
    check_vxlan(fb.buf + fb.f.start, fb.f.len, 5001, fb.buf + HEADROOM, 54);
    pass("update_errors");

    /* --- frames outside their buffers, without headroom, unknown directions ------------------- */
    /* Too little headroom (49 bytes for a 50-byte tunnel): dropped, reason encap. */
    memset(fb.buf, 0, sizeof fb.buf);
    fb.f.len = build_tcp4(fb.buf + 49, MUX_MAC, CLIENT_MAC, CLIENT, VIP, 1003, 80, TCP_SYN, 0);
    fb.f.buf = fb.buf;
    fb.f.buf_len = sizeof fb.buf;
    fb.f.start = 49;
    v = process_one(mux, &fb, 0, LB_DIRECTION_AUTO);
    CHECK_EQ(v.action, LB_ACTION_DROP);
    CHECK_STR(lb_drop_reason_name(LB_ROLE_MUX, v.reason), "encap");
    CHECK_EQ(fb.f.start, 49);
    /* Exactly 50 is enough, and the frame may end exactly at buf_len. */
    memmove(fb.buf + 50, fb.buf + 49, fb.f.len);
    fb.f.start = 50;
    fb.f.buf_len = 50 + fb.f.len;
    v = process_one(mux, &fb, 0, LB_DIRECTION_AUTO);
    CHECK_EQ(v.action, LB_ACTION_TRANSMIT);
    CHECK_EQ(fb.f.start, 0);
    CHECK_EQ(fb.f.len, fb.f.buf_len);
    /* start + len past buf_len (by one byte, by a lot, overflowing): malformed. */
    client_tcp(&fb, VIP, 1004, 80, TCP_SYN);
    fb.f.buf_len = HEADROOM + fb.f.len - 1;
    v = process_one(mux, &fb, 0, LB_DIRECTION_AUTO);
    CHECK_EQ(v.action, LB_ACTION_DROP);
    CHECK_STR(lb_drop_reason_name(LB_ROLE_MUX, v.reason), "malformed");
    CHECK_EQ(fb.f.start, HEADROOM);
    fb.f.buf_len = sizeof fb.buf;
    fb.f.start = sizeof fb.buf + 10;
    v = process_one(mux, &fb, 0, LB_DIRECTION_AUTO);
    CHECK_STR(lb_drop_reason_name(LB_ROLE_MUX, v.reason), "malformed");
    fb.f.start = HEADROOM;
    fb.f.len = (size_t)-1;
    v = process_one(mux, &fb, 0, LB_DIRECTION_AUTO);
    CHECK_STR(lb_drop_reason_name(LB_ROLE_MUX, v.reason), "malformed");
    fb.f.start = (size_t)-1;
    fb.f.len = 2;
    v = process_one(mux, &fb, 0, LB_DIRECTION_AUTO);
    CHECK_STR(lb_drop_reason_name(LB_ROLE_MUX, v.reason), "malformed");
    /* The same on a host agent, in every direction. */
    {
        uint32_t dir;
        for (dir = LB_DIRECTION_AUTO; dir <= LB_DIRECTION_FROM_BACKEND; dir++) {
            client_tcp(&fb2, VIP, 1005, 80, TCP_SYN);
            fb2.f.buf_len = HEADROOM + 10;
            v = process_one(host, &fb2, 0, dir);
            CHECK_EQ(v.action, LB_ACTION_DROP);
            CHECK_STR(lb_drop_reason_name(LB_ROLE_HOST, v.reason), "malformed");
        }
    }
    /* Unknown directions: refused as a whole, on a MUX (which ignores directions) as on a host. */
    client_tcp(&fb, VIP, 1006, 80, TCP_SYN);
    CHECK_EQ(lb_process_burst(mux, &fb.f, 1, 0, 3, &v), LB_RESULT_BAD_ARGUMENT);
    CHECK_EQ(lb_process_burst(mux, &fb.f, 1, 0, 0xffffffffu, &v), LB_RESULT_BAD_ARGUMENT);
    CHECK_EQ(lb_process_burst(host, &fb.f, 1, 0, 3, &v), LB_RESULT_BAD_ARGUMENT);
    CHECK_EQ(fb.f.start, HEADROOM);
    /* The drops were counted. */
    CHECK_EQ(lb_counters_get(mux, &c), LB_RESULT_OK);
    CHECK_EQ(c.drops[5], 1); /* encap */
    CHECK_EQ(c.drops[0], 4); /* malformed: the 4 out of their buffer (a NULL buffer is not seen, not counted) */
    pass("frames_outside_buffers");

    /* --- probes ------------------------------------------------------------------------------- */
    CHECK_EQ(lb_report_probe(host, 0, 0, 0, true), LB_RESULT_WRONG_ROLE);
    CHECK_EQ(lb_report_probe(mux, 1, 0, 0, true), LB_RESULT_BAD_ARGUMENT);
    CHECK_EQ(lb_report_probe(mux, 0, 0, 3, false), LB_RESULT_BAD_ARGUMENT);
    /* A probe no rule of the pool uses. */
    CHECK_EQ(lb_report_probe(mux, 0, 1, 0, false), LB_RESULT_BAD_ARGUMENT);
    CHECK_EQ(lb_report_probe(mux, (size_t)-1, 0, (size_t)-1, false), LB_RESULT_BAD_ARGUMENT);
    CHECK_EQ(lb_backend_up(mux, 0, 3), -1);
    CHECK_EQ(lb_backend_up(mux, 7, 0), -1);
    CHECK_EQ(lb_backend_up(host, 0, 0), -1);
    CHECK_EQ(lb_backend_up(mux, 0, 2), 1);
    pass("probe_errors");

    lb_instance_free(host);
    lb_instance_free(mux);
    lb_instance_free(NULL);
    done();
    return 0;
}

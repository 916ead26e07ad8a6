/*
 * appliance.c: a minimal C "appliance" around the lb C ABI (include/lb.h). It reads Ethernet frames
 * from a pcap file, runs them through a MUX created from a node file in bursts of 32, each frame
 * with 128 bytes of headroom in its own buffer, writes the frames the MUX transmits (VxLAN to the
 * backends' hosts) to an output pcap, and prints the counters and the drops by reason.
 *
 *   appliance NODE_FILE IN_PCAP OUT_PCAP
 *
 * The pcap reader and writer are the classic libpcap file format (no libpcap needed): either byte
 * order, microsecond or nanosecond timestamps in; little-endian, microseconds out. Each burst runs
 * at the time (in seconds) of its first frame, and the poll loop expires idle flows a few buckets at
 * a time, as a real data plane would between bursts.
 *
 * Build (see README.md): cc -std=c99 -O2 -I include examples/c-appliance/appliance.c \
 *     target/release/liblb_ffi.a -lpthread -ldl -lm -o appliance
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lb.h"

#define BURST 32
#define HEADROOM 128
#define MAX_FRAME 65535u /* the largest frame (snap length) accepted from the input */
#define EXPIRE_BUCKETS 8

/* --- pcap ----------------------------------------------------------------------------------------- */

typedef struct {
    FILE *f;
    int swapped; /* the file's byte order is not this machine's */
    int nanos;   /* timestamps in nanoseconds */
} pcap_in;

typedef struct {
    uint32_t ts_sec, ts_usec, len;
} pcap_rec;

static uint32_t swap32(uint32_t v) {
    return (v >> 24) | ((v >> 8) & 0xff00u) | ((v << 8) & 0xff0000u) | (v << 24);
}

static uint32_t field32(const pcap_in *p, const unsigned char *b) {
    uint32_t v;
    memcpy(&v, b, 4);
    return p->swapped ? swap32(v) : v;
}

/* Opens a pcap file and checks its header: 0 on success, else a message is printed. */
static int pcap_open(pcap_in *p, const char *path) {
    unsigned char h[24];
    uint32_t magic, linktype;
    p->f = fopen(path, "rb");
    if (p->f == NULL) {
        fprintf(stderr, "appliance: %s: %s\n", path, strerror(errno));
        return -1;
    }
    if (fread(h, 1, sizeof h, p->f) != sizeof h) {
        fprintf(stderr, "appliance: %s: not a pcap file (too short)\n", path);
        return -1;
    }
    memcpy(&magic, h, 4);
    p->swapped = 0;
    p->nanos = 0;
    if (magic == 0xa1b2c3d4u || magic == 0xa1b23c4du) {
        p->nanos = magic == 0xa1b23c4du;
    } else if (swap32(magic) == 0xa1b2c3d4u || swap32(magic) == 0xa1b23c4du) {
        p->swapped = 1;
        p->nanos = swap32(magic) == 0xa1b23c4du;
    } else {
        fprintf(stderr, "appliance: %s: not a pcap file (magic %08x)\n", path, (unsigned)magic);
        return -1;
    }
    linktype = field32(p, h + 20) & 0x0fffffffu; /* the high bits may carry FCS information */
    if (linktype != 1) {
        fprintf(stderr, "appliance: %s: link type %u, not Ethernet (1)\n", path, (unsigned)linktype);
        return -1;
    }
    return 0;
}

/* Reads the next record into `data` (MAX_FRAME bytes): 1 if one was read, 0 at the end, -1 on error. */
static int pcap_next(pcap_in *p, pcap_rec *r, unsigned char *data) {
    unsigned char h[16];
    size_t n = fread(h, 1, sizeof h, p->f);
    uint32_t incl;
    if (n == 0 && feof(p->f)) {
        return 0;
    }
    if (n != sizeof h) {
        fprintf(stderr, "appliance: truncated pcap record header\n");
        return -1;
    }
    r->ts_sec = field32(p, h);
    r->ts_usec = p->nanos ? field32(p, h + 4) / 1000 : field32(p, h + 4);
    incl = field32(p, h + 8);
    if (incl > MAX_FRAME) {
        fprintf(stderr, "appliance: pcap record of %u bytes (at most %u)\n", (unsigned)incl, MAX_FRAME);
        return -1;
    }
    if (fread(data, 1, incl, p->f) != incl) {
        fprintf(stderr, "appliance: truncated pcap record\n");
        return -1;
    }
    r->len = incl;
    return 1;
}

static void put32le(unsigned char *b, uint32_t v) {
    b[0] = (unsigned char)v;
    b[1] = (unsigned char)(v >> 8);
    b[2] = (unsigned char)(v >> 16);
    b[3] = (unsigned char)(v >> 24);
}

static int pcap_write_header(FILE *f) {
    unsigned char h[24] = {0};
    put32le(h, 0xa1b2c3d4u);
    h[4] = 2; /* version 2.4 */
    h[6] = 4;
    put32le(h + 16, 262144); /* snap length: what the MUX adds fits */
    put32le(h + 20, 1);      /* Ethernet */
    return fwrite(h, 1, sizeof h, f) == sizeof h ? 0 : -1;
}

static int pcap_write(FILE *f, const pcap_rec *r, const unsigned char *data, size_t len) {
    unsigned char h[16];
    put32le(h, r->ts_sec);
    put32le(h + 4, r->ts_usec);
    put32le(h + 8, (uint32_t)len);
    put32le(h + 12, (uint32_t)len);
    return fwrite(h, 1, sizeof h, f) == sizeof h && fwrite(data, 1, len, f) == len ? 0 : -1;
}

/* --- the node file -------------------------------------------------------------------------------- */

/* Reads a whole file into a malloc'd buffer; NULL (and a message) on error. */
static char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    size_t cap = 0, n = 0;
    if (f == NULL) {
        fprintf(stderr, "appliance: %s: %s\n", path, strerror(errno));
        return NULL;
    }
    for (;;) {
        size_t got;
        if (n == cap) {
            char *bigger = realloc(buf, cap = cap ? 2 * cap : 4096);
            if (bigger == NULL) {
                fprintf(stderr, "appliance: out of memory\n");
                free(buf);
                fclose(f);
                return NULL;
            }
            buf = bigger;
        }
        got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (got == 0) {
            break;
        }
    }
    if (ferror(f)) {
        fprintf(stderr, "appliance: %s: read error\n", path);
        free(buf);
        buf = NULL;
    }
    fclose(f);
    *len = n;
    return buf;
}

/* A relative "loadBalancerFile" is read from the current directory: go to the node file's. */
static int chdir_to_dir_of(const char *path) {
    const char *slash = strrchr(path, '/');
    char *dir;
    int rc;
    if (slash == NULL) {
        return 0;
    }
    dir = malloc((size_t)(slash - path) + 2);
    if (dir == NULL) {
        return -1;
    }
    if (slash == path) {
        strcpy(dir, "/");
    } else {
        memcpy(dir, path, (size_t)(slash - path));
        dir[slash - path] = 0;
    }
    rc = chdir(dir);
    if (rc != 0) {
        fprintf(stderr, "appliance: cd %s: %s\n", dir, strerror(errno));
    }
    free(dir);
    return rc;
}

/* --- main ----------------------------------------------------------------------------------------- */

int main(int argc, char **argv) {
    static unsigned char bufs[BURST][HEADROOM + MAX_FRAME];
    lb_frame frames[BURST];
    lb_verdict verdicts[BURST];
    pcap_rec recs[BURST];
    pcap_in in;
    FILE *out;
    lb_instance *mux = NULL;
    lb_counters c;
    lb_result r;
    char err[512];
    char *json;
    size_t json_len, i;
    unsigned long long frames_in = 0, transmit = 0, deliver = 0, drop = 0;
    int more = 1, status = 0;

    if (argc != 4) {
        fprintf(stderr, "usage: %s NODE_FILE IN_PCAP OUT_PCAP\n", argv[0]);
        return 2;
    }
    /* Open both captures before changing directory: their paths are relative to where we started. */
    if (pcap_open(&in, argv[2]) != 0) {
        return 1;
    }
    out = fopen(argv[3], "wb");
    if (out == NULL || pcap_write_header(out) != 0) {
        fprintf(stderr, "appliance: %s: %s\n", argv[3], strerror(errno));
        return 1;
    }
    json = read_file(argv[1], &json_len);
    if (json == NULL || chdir_to_dir_of(argv[1]) != 0) {
        return 1;
    }
    r = lb_instance_new(json, json_len, &mux, err, sizeof err);
    free(json);
    if (r != LB_RESULT_OK) {
        fprintf(stderr, "appliance: %s: %s (%s)\n", argv[1], err, lb_result_name(r));
        return 1;
    }
    if (lb_instance_role(mux) != LB_ROLE_MUX) {
        fprintf(stderr, "appliance: %s: not a MUX node file\n", argv[1]);
        lb_instance_free(mux);
        return 1;
    }
    printf("lb %s, MUX from %s\n", lb_version(), argv[1]);

    while (more && status == 0) {
        size_t n = 0;
        while (n < BURST) {
            int got = pcap_next(&in, &recs[n], bufs[n] + HEADROOM);
            if (got < 0) {
                status = 1;
            }
            if (got <= 0) {
                more = 0;
                break;
            }
            frames[n].buf = bufs[n];
            frames[n].buf_len = sizeof bufs[n];
            frames[n].start = HEADROOM;
            frames[n].len = recs[n].len;
            n++;
        }
        if (n == 0) {
            break;
        }
        r = lb_process_burst(mux, frames, n, recs[0].ts_sec, LB_DIRECTION_AUTO, verdicts);
        if (r != LB_RESULT_OK) {
            fprintf(stderr, "appliance: lb_process_burst: %s\n", lb_result_name(r));
            status = 1;
            break;
        }
        frames_in += n;
        for (i = 0; i < n; i++) {
            switch (verdicts[i].action) {
            case LB_ACTION_TRANSMIT:
                transmit++;
                if (pcap_write(out, &recs[i], frames[i].buf + frames[i].start, frames[i].len) != 0) {
                    fprintf(stderr, "appliance: %s: write error\n", argv[3]);
                    status = 1;
                }
                break;
            case LB_ACTION_DELIVER: /* a MUX never delivers */
                deliver++;
                break;
            default:
                drop++;
                break;
            }
        }
        lb_expire(mux, recs[0].ts_sec, EXPIRE_BUCKETS);
    }
    fclose(in.f);
    if (fclose(out) != 0) {
        status = 1;
    }

    r = lb_counters_get(mux, &c);
    if (r != LB_RESULT_OK) {
        fprintf(stderr, "appliance: lb_counters_get: %s\n", lb_result_name(r));
        status = 1;
    } else {
        printf("frames: %llu\ntransmit: %llu\ndeliver: %llu\ndrop: %llu\n", frames_in, transmit, deliver, drop);
        printf("forwarded: %llu\nforwarded_bytes: %llu\nnew_flows: %llu\nflows: %llu\n",
               (unsigned long long)c.forwarded, (unsigned long long)c.forwarded_bytes,
               (unsigned long long)c.new_flows, (unsigned long long)c.flows);
        printf("drops by reason:\n");
        for (i = 0; i < c.drop_reasons; i++) {
            printf("  %s: %llu\n", lb_drop_reason_name(LB_ROLE_MUX, (uint32_t)i), (unsigned long long)c.drops[i]);
        }
    }
    lb_instance_free(mux);
    return status;
}

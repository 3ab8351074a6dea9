/*
 * mqttgen: the benchmark's MQTT 3.1.1 load generator.
 *
 * It plays every client of one scenario (publishers, subscribers, idle sessions) from one thread with
 * one epoll loop over nonblocking sockets, so that the broker, not the generator, is the bottleneck:
 *   - a publisher writes many PUBLISH packets with one send(); a subscriber answers a whole received
 *     chunk with one send() of acknowledgements;
 *   - nothing is allocated and the clock is read once per batch on the message path.
 *
 * Every payload starts with a 24-byte header (magic, publisher id, sequence number, send time), so
 * each run is also an audit: the subscribers count, per publisher, what was lost, duplicated and
 * reordered, and measure publish-to-delivery latency from the send time.
 *
 * The driver (bench/generator.py) starts it and reads its standard output, a line protocol:
 *   mark NAME      a phase boundary (window-start, window-end, ...): the driver samples the broker's
 *                  /proc counters when it reads the line; the generator goes on at once
 *   hold NAME      the generator waits for a line on standard input (the driver reads the broker's RSS
 *                  meanwhile); nothing is sent while it waits
 *   result {...}   the JSON result, the last line
 * Diagnostics go to standard error. `mqttgen --help` lists the options; `mqttgen --self-test` checks
 * the encoders, the framer and the audit without a broker.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define NS_PER_S 1000000000ull
#define NS_PER_MS 1000000ull
#define NS_PER_US 1000ull

/* Payload header: "MQGB", publisher id (u32), sequence number (u64), send time (u64, CLOCK_MONOTONIC
 * ns), all big-endian. The rest of the payload is filler. */
#define HEADER_MAGIC 0x4d514742u
#define HEADER_BYTES 24

#define MAX_PACKET_ID 65535
#define RECV_BUFFER_BYTES (256 * 1024)
/* A publisher stops adding packets while this much is still waiting for the socket. */
#define OUT_HIGH_WATER (256 * 1024)
#define MAX_EVENTS 512
#define SETUP_TIMEOUT_NS (60 * NS_PER_S)
#define IDLE_STEP_TIMEOUT_NS (180 * NS_PER_S)
#define OFFLINE_SETTLE_NS (200 * NS_PER_MS)
/* A connection that waits for a batch (SO_RCVLOWAT > 1) and has not been read for this long is read
 * anyway: whatever is queued is taken, so a batch that never fills costs at most this much delay. */
#define BATCH_STALL_NS (1 * NS_PER_MS)
/* A connection batches only if, over its first PROBE_READS reads that could have waited, the broker's
 * writes brought less than half a batch per read. */
#define PROBE_READS 32
/* ... and a connection that did not measure so measures again after this many reads. */
#define PROBE_AGAIN_READS 2048
/* A batch that did not fill in BATCH_STALL_NS but had data: stop batching for this many reads. */
#define PROBE_AFTER_STALL_READS 64

/* MQTT 3.1.1 packet types (section 2.2.1) and the first bytes of the two-byte acknowledgements. PUBREL
 * carries flags 0b0010 [MQTT-3.6.1-1]. */
enum packet_type {
    CONNACK = 2, PUBLISH = 3, PUBACK = 4, PUBREC = 5, PUBREL = 6, PUBCOMP = 7, SUBACK = 9, PINGRESP = 13
};
#define PUBACK_BYTE 0x40
#define PUBREC_BYTE 0x50
#define PUBREL_BYTE 0x62
#define PUBCOMP_BYTE 0x70
static const uint8_t PINGREQ_PACKET[2] = {0xc0, 0x00};
static const uint8_t DISCONNECT_PACKET[2] = {0xe0, 0x00};

/* ------------------------------------------------------------------------------------ small tools */

static void die(const char *what)
{
    fprintf(stderr, "mqttgen: %s: %s\n", what, strerror(errno));
    exit(2);
}

static void *xcalloc(size_t count, size_t size)
{
    void *p = calloc(count ? count : 1, size ? size : 1);
    if (!p)
        die("calloc");
    return p;
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * NS_PER_S + (uint64_t)ts.tv_nsec;
}

static void put_u16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }
static uint16_t get_u16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }

static void put_u32(uint8_t *p, uint32_t v)
{
    for (int i = 3; i >= 0; i--, v >>= 8)
        p[i] = (uint8_t)v;
}

static uint32_t get_u32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void put_u64(uint8_t *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--, v >>= 8)
        p[i] = (uint8_t)v;
}

static uint64_t get_u64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | p[i];
    return v;
}

/* A growable byte buffer: a connection's unsent output, or the partial packet left over from a read. */
struct buf {
    uint8_t *data;
    size_t len, cap;
};

static uint8_t *buf_extend(struct buf *b, size_t n)
{
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n)
            cap *= 2;
        b->data = realloc(b->data, cap);
        if (!b->data)
            die("realloc");
        b->cap = cap;
    }
    uint8_t *end = b->data + b->len;
    b->len += n;
    return end;
}

static void buf_append(struct buf *b, const void *bytes, size_t n) { memcpy(buf_extend(b, n), bytes, n); }

static void buf_consume(struct buf *b, size_t n)
{
    memmove(b->data, b->data + n, b->len - n);
    b->len -= n;
}

/* Idle connections must cost the generator little memory: give the space back once a buffer is empty. */
static void buf_release(struct buf *b)
{
    free(b->data);
    *b = (struct buf){0};
}

/* A growable set of sequence numbers (they are dense: 0, 1, 2, ... per publisher). */
struct bitset {
    uint64_t *words;
    size_t nwords;
};

static void bitset_set(struct bitset *s, uint64_t index)
{
    size_t word = (size_t)(index / 64);
    if (word >= s->nwords) {
        size_t n = s->nwords ? s->nwords : 1024;
        while (n <= word)
            n *= 2;
        s->words = realloc(s->words, n * sizeof *s->words);
        if (!s->words)
            die("realloc");
        memset(s->words + s->nwords, 0, (n - s->nwords) * sizeof *s->words);
        s->nwords = n;
    }
    s->words[word] |= 1ull << (index % 64);
}

static bool bitset_test(const struct bitset *s, uint64_t index)
{
    size_t word = (size_t)(index / 64);
    return word < s->nwords && (s->words[word] >> (index % 64) & 1);
}

/* How many members of `want` are missing from `have`. */
static uint64_t bitset_missing(const struct bitset *want, const struct bitset *have)
{
    uint64_t missing = 0;
    for (size_t i = 0; i < want->nwords; i++) {
        uint64_t got = i < have->nwords ? have->words[i] : 0;
        missing += (uint64_t)__builtin_popcountll(want->words[i] & ~got);
    }
    return missing;
}

/* The first `count` sequence numbers as a set: what a QoS 0 publisher sent. */
static void bitset_fill(struct bitset *s, uint64_t count)
{
    for (uint64_t i = 0; i < count; i++)
        bitset_set(s, i);
}

/* Latencies: 1 us buckets up to 65.5 ms, then 1 ms buckets up to 65.5 s; percentiles need no sample
 * list, so recording costs the same at 200,000 messages/s as at 2,000. */
#define HIST_BUCKETS 65536
struct histogram {
    uint32_t *fine, *coarse;
    uint64_t count, overflow, max_ns;
};

static void histogram_record(struct histogram *h, uint64_t ns)
{
    if (!h->fine) {
        h->fine = xcalloc(HIST_BUCKETS, sizeof *h->fine);
        h->coarse = xcalloc(HIST_BUCKETS, sizeof *h->coarse);
    }
    uint64_t us = ns / NS_PER_US;
    if (us < HIST_BUCKETS)
        h->fine[us]++;
    else if (us / 1000 < HIST_BUCKETS)
        h->coarse[us / 1000]++;
    else
        h->overflow++;
    h->count++;
    if (ns > h->max_ns)
        h->max_ns = ns;
}

/* Nearest-rank percentile in microseconds (the lower edge of its bucket). */
static double histogram_percentile_us(const struct histogram *h, double fraction)
{
    if (!h->count)
        return 0;
    uint64_t rank = (uint64_t)(fraction * (double)h->count + 0.999999);
    if (rank < 1)
        rank = 1;
    uint64_t seen = 0;
    for (uint64_t us = 0; us < HIST_BUCKETS; us++)
        if ((seen += h->fine[us]) >= rank)
            return (double)us;
    for (uint64_t ms = 0; ms < HIST_BUCKETS; ms++)
        if ((seen += h->coarse[ms]) >= rank)
            return (double)ms * 1000.0;
    return (double)h->max_ns / NS_PER_US;
}

/* ------------------------------------------------------------------------------------ MQTT encoding */

/* Remaining length: a variable byte integer of at most 4 bytes (section 2.2.3). */
static size_t encode_varint(uint8_t *out, uint32_t value)
{
    size_t n = 0;
    do {
        uint8_t byte = value % 128;
        value /= 128;
        out[n++] = value ? byte | 0x80 : byte;
    } while (value);
    return n;
}

/* 1 and the value when complete, 0 when more bytes are needed, -1 when malformed (a fifth byte). */
static int decode_varint(const uint8_t *p, size_t available, uint32_t *value, size_t *used)
{
    uint32_t v = 0;
    for (size_t i = 0; i < 4; i++) {
        if (i >= available)
            return 0;
        v |= (uint32_t)(p[i] & 0x7f) << (7 * i);
        if (!(p[i] & 0x80)) {
            *value = v;
            *used = i + 1;
            return 1;
        }
    }
    return -1;
}

static void append_string(struct buf *b, const char *text)
{
    size_t n = strlen(text);
    put_u16(buf_extend(b, 2), (uint16_t)n);
    buf_append(b, text, n);
}

/* Fixed header with the given first byte and remaining length. */
static void append_fixed_header(struct buf *b, uint8_t first, uint32_t remaining)
{
    uint8_t header[5];
    header[0] = first;
    size_t n = 1 + encode_varint(header + 1, remaining);
    buf_append(b, header, n);
}

/* CONNECT for protocol level 4 (3.1.1), no will, no credentials (section 3.1). */
static void append_connect(struct buf *b, const char *client_id, bool clean_session, uint16_t keepalive_s)
{
    static const uint8_t protocol[7] = {0x00, 0x04, 'M', 'Q', 'T', 'T', 0x04};
    append_fixed_header(b, 0x10, (uint32_t)(sizeof protocol + 1 + 2 + 2 + strlen(client_id)));
    buf_append(b, protocol, sizeof protocol);
    uint8_t flags = clean_session ? 0x02 : 0x00;
    buf_append(b, &flags, 1);
    put_u16(buf_extend(b, 2), keepalive_s);
    append_string(b, client_id);
}

/* SUBSCRIBE with one filter; its fixed-header flags must be 0b0010 [MQTT-3.8.1-1]. */
static void append_subscribe(struct buf *b, uint16_t packet_id, const char *filter, int qos)
{
    append_fixed_header(b, 0x82, (uint32_t)(2 + 2 + strlen(filter) + 1));
    put_u16(buf_extend(b, 2), packet_id);
    append_string(b, filter);
    uint8_t requested = (uint8_t)qos;
    buf_append(b, &requested, 1);
}

static void append_ack(struct buf *b, uint8_t first, uint16_t packet_id)
{
    uint8_t *p = buf_extend(b, 4);
    p[0] = first;
    p[1] = 2;
    put_u16(p + 2, packet_id);
}

/* One PUBLISH packet of a stream, encoded once; each message copies it and patches its packet id and
 * payload header. */
struct publish_template {
    struct buf bytes;
    size_t packet_id_offset, payload_offset;
};

static void template_init(struct publish_template *t, const char *topic, int qos, size_t payload_size)
{
    size_t topic_len = strlen(topic);
    /* DUP = 0, RETAIN = 0. */
    append_fixed_header(&t->bytes, (uint8_t)(0x30 | qos << 1),
                        (uint32_t)(2 + topic_len + (qos ? 2 : 0) + payload_size));
    append_string(&t->bytes, topic);
    t->packet_id_offset = t->bytes.len;
    if (qos)
        buf_extend(&t->bytes, 2);
    t->payload_offset = t->bytes.len;
    memset(buf_extend(&t->bytes, payload_size), 'x', payload_size);
}

struct header {
    uint32_t publisher;
    uint64_t seq, sent_ns;
};

static void header_write(uint8_t *payload, const struct header *h)
{
    put_u32(payload, HEADER_MAGIC);
    put_u32(payload + 4, h->publisher);
    put_u64(payload + 8, h->seq);
    put_u64(payload + 16, h->sent_ns);
}

static bool header_read(const uint8_t *payload, size_t len, struct header *h)
{
    if (len < HEADER_BYTES || get_u32(payload) != HEADER_MAGIC)
        return false;
    h->publisher = get_u32(payload + 4);
    h->seq = get_u64(payload + 8);
    h->sent_ns = get_u64(payload + 16);
    return true;
}

/* ------------------------------------------------------------------------------------ options */

enum mode { MODE_FLOW, MODE_DRAIN, MODE_IDLE, MODE_SELF_TEST };

struct options {
    enum mode mode;
    const char *host;
    int port;
    int qos;
    int publishers, subscribers;
    size_t payload;
    int window;              /* QoS 1/2: messages in flight per publisher */
    int batch;               /* QoS 0: PUBLISH packets per batch (one PINGREQ after each) */
    int batches_ahead;       /* QoS 0: batches per publisher not yet answered by a PINGRESP */
    double rate;             /* messages/s per publisher, paced; 0: as fast as the window allows */
    int rcvlowat;            /* QoS 0 subscribers: bytes queued before epoll reports them readable */
    int ack_batch;           /* QoS 1/2 unpaced publishers: acknowledgements queued before a wake-up */
    int delivery_batch;      /* QoS 1/2 unpaced subscribers: deliveries queued before a wake-up */
    double warmup_s, duration_s, grace_s, quiet_s;
    bool persistent;         /* subscribers use clean session 0 */
    long messages;           /* drain: messages queued for the offline subscriber */
    long steps[8];           /* idle: connection counts to hold at */
    int nsteps;
    int warmup_clients;      /* idle: clients that connect and leave before the baseline */
    int concurrency;         /* idle: connections being set up at once */
    int keepalive_s;
    const char *topic;
    const char *prefix;      /* client ids: PREFIX-pubN, PREFIX-subN, PREFIX-idleN */
};

static void usage(FILE *out)
{
    fputs("usage: mqttgen --mode flow|drain|idle --port P [options]   |   mqttgen --self-test\n"
          "  --host H            broker address (127.0.0.1)\n"
          "  --qos N             0, 1 or 2 (flow: 0; drain: 1)\n"
          "  --publishers N      (4)          --subscribers N  (1)\n"
          "  --payload BYTES     >= 24 (64)\n"
          "  --window N          QoS 1/2 messages in flight per publisher (20)\n"
          "  --batch N           QoS 0 PUBLISH packets per send, then a PINGREQ (128)\n"
          "  --batches-ahead N   QoS 0 batches not yet answered by PINGRESP, per publisher (8)\n"
          "  --rate R            paced messages/s per publisher (0: as fast as the window allows)\n"
          "  --rcvlowat BYTES    QoS 0 subscribers wake up for this much data while publishing (1)\n"
          "  --ack-batch N       QoS 1/2 publishers wake up for N acknowledgements while publishing (1)\n"
          "  --delivery-batch N  QoS 1/2 subscribers wake up for N deliveries while they flow (1)\n"
          "  --warmup S --duration S --grace S --quiet S   phase lengths (1, 10, 10, 0.5)\n"
          "  --persistent        subscribers use clean session 0\n"
          "  --messages N        drain: messages queued for the offline subscriber (10000)\n"
          "  --connections A,B   idle: hold at each of these connection counts (5000)\n"
          "  --warmup-clients N  idle: clients that connect and leave before the baseline (10)\n"
          "  --concurrency N     idle: connections set up at once (200)\n"
          "  --keepalive S       (60; idle: 600)\n"
          "  --topic T --prefix P   topic (bench/load) and client-id prefix (bench)\n",
          out);
}

static void parse_steps(struct options *o, const char *text)
{
    o->nsteps = 0;
    for (const char *p = text; *p && o->nsteps < 8;) {
        char *end;
        long n = strtol(p, &end, 10);
        if (end == p || n <= 0 || (o->nsteps && n <= o->steps[o->nsteps - 1])) {
            fprintf(stderr, "mqttgen: --connections wants increasing positive counts: %s\n", text);
            exit(2);
        }
        o->steps[o->nsteps++] = n;
        p = *end == ',' ? end + 1 : end;
    }
}

static struct options parse_options(int argc, char **argv)
{
    struct options o = {
        .mode = MODE_FLOW, .host = "127.0.0.1", .port = 0, .qos = -1, .publishers = 4, .subscribers = 1,
        .payload = 64, .window = 20, .batch = 128, .batches_ahead = 8, .rate = 0, .rcvlowat = 1, .warmup_s = 1,
        .ack_batch = 1, .delivery_batch = 1, .duration_s = 10, .grace_s = 10, .quiet_s = 0.5, .persistent = false, .messages = 10000,
        .steps = {5000}, .nsteps = 1, .warmup_clients = 10, .concurrency = 200, .keepalive_s = -1,
        .topic = "bench/load", .prefix = "bench",
    };
    static const struct option longopts[] = {
        {"mode", required_argument, 0, 'm'}, {"host", required_argument, 0, 'H'},
        {"port", required_argument, 0, 'p'}, {"qos", required_argument, 0, 'q'},
        {"publishers", required_argument, 0, 'P'}, {"subscribers", required_argument, 0, 'S'},
        {"payload", required_argument, 0, 'l'}, {"window", required_argument, 0, 'w'},
        {"batch", required_argument, 0, 'b'}, {"batches-ahead", required_argument, 0, 'a'},
        {"rate", required_argument, 0, 'r'}, {"warmup", required_argument, 0, 'W'},
        {"rcvlowat", required_argument, 0, 'L'},
        {"ack-batch", required_argument, 0, 'A'},
        {"delivery-batch", required_argument, 0, 'B'},
        {"duration", required_argument, 0, 'd'}, {"grace", required_argument, 0, 'g'},
        {"quiet", required_argument, 0, 'Q'}, {"persistent", no_argument, 0, 'k'},
        {"messages", required_argument, 0, 'n'}, {"connections", required_argument, 0, 'c'},
        {"warmup-clients", required_argument, 0, 'u'}, {"concurrency", required_argument, 0, 'C'},
        {"keepalive", required_argument, 0, 'K'}, {"topic", required_argument, 0, 't'},
        {"prefix", required_argument, 0, 'x'}, {"self-test", no_argument, 0, 'T'},
        {"help", no_argument, 0, 'h'}, {0, 0, 0, 0},
    };
    int c;
    while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (c) {
        case 'm':
            if (!strcmp(optarg, "flow")) o.mode = MODE_FLOW;
            else if (!strcmp(optarg, "drain")) o.mode = MODE_DRAIN;
            else if (!strcmp(optarg, "idle")) o.mode = MODE_IDLE;
            else { usage(stderr); exit(2); }
            break;
        case 'H': o.host = optarg; break;
        case 'p': o.port = atoi(optarg); break;
        case 'q': o.qos = atoi(optarg); break;
        case 'P': o.publishers = atoi(optarg); break;
        case 'S': o.subscribers = atoi(optarg); break;
        case 'l': o.payload = (size_t)atol(optarg); break;
        case 'w': o.window = atoi(optarg); break;
        case 'b': o.batch = atoi(optarg); break;
        case 'a': o.batches_ahead = atoi(optarg); break;
        case 'r': o.rate = atof(optarg); break;
        case 'L': o.rcvlowat = atoi(optarg); break;
        case 'A': o.ack_batch = atoi(optarg); break;
        case 'B': o.delivery_batch = atoi(optarg); break;
        case 'W': o.warmup_s = atof(optarg); break;
        case 'd': o.duration_s = atof(optarg); break;
        case 'g': o.grace_s = atof(optarg); break;
        case 'Q': o.quiet_s = atof(optarg); break;
        case 'k': o.persistent = true; break;
        case 'n': o.messages = atol(optarg); break;
        case 'c': parse_steps(&o, optarg); break;
        case 'u': o.warmup_clients = atoi(optarg); break;
        case 'C': o.concurrency = atoi(optarg); break;
        case 'K': o.keepalive_s = atoi(optarg); break;
        case 't': o.topic = optarg; break;
        case 'x': o.prefix = optarg; break;
        case 'T': o.mode = MODE_SELF_TEST; break;
        case 'h': usage(stdout); exit(0);
        default: usage(stderr); exit(2);
        }
    }
    if (o.qos < 0)
        o.qos = o.mode == MODE_DRAIN ? 1 : 0;
    if (o.keepalive_s < 0)
        o.keepalive_s = o.mode == MODE_IDLE ? 600 : 60;
    bool bad = optind != argc || o.qos > 2 || o.publishers < 1 || o.subscribers < 1 || o.window < 1
               || o.window > 60000 || o.batch < 1 || o.batches_ahead < 1 || o.payload < HEADER_BYTES
               || o.concurrency < 1 || o.rate < 0 || o.rcvlowat < 1 || o.ack_batch < 1
               || o.ack_batch > o.window || o.delivery_batch < 1 || o.messages < 1 || o.keepalive_s > 65535
               || (o.mode == MODE_DRAIN && o.qos == 0);
    if (o.mode != MODE_SELF_TEST && (o.port <= 0 || o.port > 65535))
        bad = true;
    if (bad) {
        usage(stderr);
        exit(2);
    }
    return o;
}

/* ------------------------------------------------------------------------------------ state */

enum role { ROLE_PUBLISHER, ROLE_SUBSCRIBER, ROLE_IDLE };
enum state { ST_CONNECTING, ST_AWAIT_CONNACK, ST_AWAIT_SUBACK, ST_READY, ST_CLOSED };

struct publisher;
struct subscriber;

struct conn {
    int fd;
    enum role role;
    enum state state;
    bool clean_session;
    bool subscribe_after_connack;
    bool session_present;
    bool want_writable;       /* EPOLLOUT is registered: output is waiting for the socket */
    char client_id[64];
    char filter[96];          /* what it subscribes to */
    struct buf in, out;
    struct publisher *pub;    /* set for publishers */
    struct subscriber *sub;   /* set for subscribers */
    int lowat;                /* its SO_RCVLOWAT; > 1: it waits for a batch (QoS 1/2) */
    uint64_t last_read_ns;    /* while it waits for a batch: when it was last read */
    int batching;             /* QoS 1/2: 0 measuring the broker's writes, 1 batch, < 0 reads until
                               * it measures again */
    uint32_t probe_reads;     /* while measuring: reads that could have waited for a batch ... */
    uint64_t probe_bytes;     /* ... and the bytes they returned */
};

struct publisher {
    uint32_t id;
    struct conn *conn;
    struct publish_template tpl;
    uint64_t next_seq;        /* sequence number of the next message: messages sent so far */
    uint64_t limit;           /* send at most this many (0: no limit) */
    /* QoS 1/2 */
    uint64_t *seq_of_pid;     /* [65536]: 1 + sequence number in flight under that packet id; 0 = free */
    uint64_t *sent_ns_of_pid; /* [65536]: when it was written, for the acknowledgement latency */
    uint16_t next_pid;
    uint32_t inflight;
    uint64_t acked;           /* flows the broker completed: PUBACK (QoS 1) or PUBCOMP (QoS 2) */
    uint64_t stray_acks;      /* acknowledgements for a packet id not in flight */
    struct bitset acked_seqs;
    /* QoS 0 */
    uint32_t unanswered_batches;
    /* paced */
    uint64_t window_full;     /* due messages skipped because the window was full */
};

/* What one subscriber received from one publisher. */
struct stream {
    struct bitset seen;
    uint64_t unique, duplicated, reordered;
    uint64_t next_expected;   /* highest sequence number seen + 1 */
};

struct subscriber {
    struct conn *conn;        /* its current connection (NULL while away) */
    char client_id[64];
    struct stream *streams;   /* one per publisher */
    uint64_t received;        /* PUBLISH packets, duplicates included */
    uint64_t dup_flagged;     /* PUBLISH packets with DUP set */
    uint64_t foreign;         /* payloads without our header, or from no publisher of this run */
    uint64_t last_arrival_ns;
};

/* CPU this process used and the wall clock at one moment. */
struct cpu_mark {
    uint64_t wall_ns;
    double user_s, sys_s;
};

/* One measurement window: counters at its start, and their differences when it closed. */
struct window {
    struct cpu_mark cpu_start;
    uint64_t sent0, acked0, delivered0;
    double seconds, cpu_pct, user_s, sys_s;
    uint64_t sent, acked, delivered;
};

static struct {
    struct options opt;
    int epoll_fd;
    int timer_fd;             /* paced publishing */
    struct sockaddr_in broker;
    struct conn **conns;
    size_t nconns, capconns;
    struct publisher *pubs;
    size_t npubs;
    struct subscriber *subs;
    size_t nsubs;
    bool publishing;
    bool closing;             /* connections are being closed on purpose */
    uint64_t pace_start_ns, paced_scheduled;
    uint64_t window_start_ns, window_end_ns; /* latency samples: messages sent in [start, end) */
    struct histogram e2e, ack;
    size_t setting_up;        /* connections opened but not yet ready (or failed) */
    uint64_t protocol_errors, connect_failures, closed_unexpectedly;
    char first_error[256];
    uint8_t *recv_buffer;
    size_t waiting_for_batches; /* QoS 1/2 connections whose SO_RCVLOWAT is above 1 */
    /* syscall counts ([0] publishers, [1] the others), printed at each window's end with MQTTGEN_STATS=1 */
    uint64_t stat_stalls, stat_recv[2], stat_recv_bytes[2], stat_send[2], stat_wait, stat_events;
    bool deliveries_batch;    /* QoS 1/2 subscribers may wait for batches (while deliveries flow) */
} G;

static void note_error(const char *fmt, const char *client_id, const char *detail)
{
    if (!G.first_error[0])
        snprintf(G.first_error, sizeof G.first_error, fmt, client_id, detail);
}

static struct cpu_mark cpu_now(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (struct cpu_mark){
        .wall_ns = now_ns(),
        .user_s = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6,
        .sys_s = (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6,
    };
}

static uint64_t total_sent(void)
{
    uint64_t n = 0;
    for (size_t i = 0; i < G.npubs; i++)
        n += G.pubs[i].next_seq;
    return n;
}

static uint64_t total_acked(void)
{
    uint64_t n = 0;
    for (size_t i = 0; i < G.npubs; i++)
        n += G.pubs[i].acked;
    return n;
}

static uint64_t total_received(void)
{
    uint64_t n = 0;
    for (size_t i = 0; i < G.nsubs; i++)
        n += G.subs[i].received;
    return n;
}

/* Tell the driver that a phase boundary is here; it samples the broker when it reads the line. */
static void mark(const char *name)
{
    printf("mark %s\n", name);
    fflush(stdout);
}

/* Let the driver read the broker while nothing moves; go on when it answers with a line. */
static void hold(const char *name)
{
    char line[64];
    printf("hold %s\n", name);
    fflush(stdout);
    if (!fgets(line, sizeof line, stdin)) {
        fprintf(stderr, "mqttgen: standard input closed during hold %s\n", name);
        exit(2);
    }
}

static void window_open(struct window *w)
{
    w->sent0 = total_sent();
    w->acked0 = total_acked();
    w->delivered0 = total_received();
    w->cpu_start = cpu_now();
}

static void window_close(struct window *w)
{
    if (getenv("MQTTGEN_STATS"))
        fprintf(stderr,
                "mqttgen: since start: recv() publishers %" PRIu64 " (%" PRIu64 " B), subscribers %" PRIu64
                " (%" PRIu64 " B); send() publishers %" PRIu64 ", subscribers %" PRIu64 "; epoll_wait() %" PRIu64
                " (%" PRIu64 " events); unfilled batches read after %llu ms: %" PRIu64 "\n",
                G.stat_recv[0], G.stat_recv_bytes[0], G.stat_recv[1], G.stat_recv_bytes[1], G.stat_send[0],
                G.stat_send[1], G.stat_wait, G.stat_events, BATCH_STALL_NS / NS_PER_MS, G.stat_stalls);
    struct cpu_mark end = cpu_now();
    w->seconds = (double)(end.wall_ns - w->cpu_start.wall_ns) / 1e9;
    w->user_s = end.user_s - w->cpu_start.user_s;
    w->sys_s = end.sys_s - w->cpu_start.sys_s;
    w->cpu_pct = w->seconds > 0 ? (w->user_s + w->sys_s) / w->seconds * 100.0 : 0;
    w->sent = total_sent() - w->sent0;
    w->acked = total_acked() - w->acked0;
    w->delivered = total_received() - w->delivered0;
}

/* ------------------------------------------------------------------------------------ connections */

static void conn_watch(struct conn *c, bool writable)
{
    struct epoll_event ev = {.events = EPOLLIN | (writable ? EPOLLOUT : 0), .data.ptr = c};
    if (epoll_ctl(G.epoll_fd, EPOLL_CTL_MOD, c->fd, &ev) < 0)
        die("epoll_ctl");
    c->want_writable = writable;
}

static void conn_close(struct conn *c)
{
    if (c->state == ST_CLOSED)
        return;
    if (c->state != ST_READY)
        G.setting_up--;
    epoll_ctl(G.epoll_fd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    if (G.opt.qos && c->lowat > 1)
        G.waiting_for_batches--;
    c->lowat = 0;
    c->fd = -1;
    c->state = ST_CLOSED;
    buf_release(&c->in);
    buf_release(&c->out);
    if (c->sub && c->sub->conn == c)
        c->sub->conn = NULL;
}

/* The broker closed the connection, or the socket failed. */
static void conn_lost(struct conn *c, const char *reason)
{
    if (c->state == ST_CLOSED)
        return;
    if (c->state != ST_READY) {
        G.connect_failures++;
        note_error("%s: set-up failed: %s", c->client_id, reason);
    } else if (!G.closing) {
        G.closed_unexpectedly++;
        note_error("%s: connection lost: %s", c->client_id, reason);
    }
    conn_close(c);
}

static void protocol_error(struct conn *c, const char *what)
{
    G.protocol_errors++;
    fprintf(stderr, "mqttgen: %s: %s; closing\n", c->client_id, what);
    conn_lost(c, what);
}

/* Send what is waiting; ask epoll for writability only while something is left. */
static void conn_flush(struct conn *c)
{
    size_t sent = 0;
    while (c->state != ST_CLOSED && sent < c->out.len) {
        ssize_t n = send(c->fd, c->out.data + sent, c->out.len - sent, MSG_NOSIGNAL);
        G.stat_send[c->pub ? 0 : 1]++;
        if (n >= 0) {
            sent += (size_t)n;
        } else if (errno == EAGAIN) {
            break;
        } else if (errno != EINTR) {
            conn_lost(c, strerror(errno));
            return;
        }
    }
    if (c->state == ST_CLOSED)
        return;
    if (sent == c->out.len)
        c->out.len = 0;
    else
        buf_consume(&c->out, sent);
    if ((c->out.len > 0) != c->want_writable)
        conn_watch(c, c->out.len > 0);
}

static struct conn *conn_new(enum role role, const char *client_id, bool clean_session, const char *filter)
{
    struct conn *c = xcalloc(1, sizeof *c);
    c->fd = -1;
    c->role = role;
    c->state = ST_CLOSED;
    c->clean_session = clean_session;
    snprintf(c->client_id, sizeof c->client_id, "%s", client_id);
    if (filter) {
        snprintf(c->filter, sizeof c->filter, "%s", filter);
        c->subscribe_after_connack = true;
    }
    if (G.nconns == G.capconns) {
        G.capconns = G.capconns ? G.capconns * 2 : 64;
        G.conns = realloc(G.conns, G.capconns * sizeof *G.conns);
        if (!G.conns)
            die("realloc");
    }
    G.conns[G.nconns++] = c;
    return c;
}

static void conn_send_connect(struct conn *c)
{
    c->state = ST_AWAIT_CONNACK;
    append_connect(&c->out, c->client_id, c->clean_session, (uint16_t)G.opt.keepalive_s);
    conn_flush(c);
}

/* Start a nonblocking connect; CONNECT follows once the socket is connected. */
static void conn_open(struct conn *c)
{
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0)
        die("socket");
    /* The generator batches its own writes; Nagle would only add delay to the last packet. */
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->state = ST_CONNECTING;
    c->lowat = 1;
    G.setting_up++;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
    if (epoll_ctl(G.epoll_fd, EPOLL_CTL_ADD, c->fd, &ev) < 0)
        die("epoll_ctl");
    c->want_writable = true;
    if (connect(c->fd, (struct sockaddr *)&G.broker, sizeof G.broker) == 0) {
        conn_watch(c, false);
        conn_send_connect(c);
    } else if (errno != EINPROGRESS) {
        conn_lost(c, strerror(errno));
    }
}

static void on_connect_finished(struct conn *c)
{
    int error = 0;
    socklen_t len = sizeof error;
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &error, &len);
    if (error) {
        conn_lost(c, strerror(error));
        return;
    }
    conn_watch(c, false);
    conn_send_connect(c);
}

static void idle_top_up(void);

static void set_rcvlowat(struct conn *c, int bytes)
{
    if (c->state != ST_CLOSED && setsockopt(c->fd, SOL_SOCKET, SO_RCVLOWAT, &bytes, sizeof bytes) < 0)
        die("setsockopt SO_RCVLOWAT");
}

/* Messages the publishers sent that this subscriber has not yet received. */
static uint64_t subscriber_backlog(const struct subscriber *s);

/* QoS 1/2 batching. Mosquitto 2.0.11 writes every PUBACK and every delivery with its own send(), and
 * each one woke the generator: a recv(), an epoll_wait() and a send() per few packets took 70-80 % of
 * its core. Acknowledgements and deliveries that are certain to come may be waited for:
 * - a publisher with at least `ack_batch` messages in flight is owed at least that many 4-byte packets
 *   (PUBACK; at QoS 2 PUBREC or PUBCOMP), so it asks to be woken for 4 x ack_batch bytes;
 * - a subscriber that has not yet received at least `delivery_batch` of the messages sent asks to be
 *   woken for that many PUBLISH packets (`delivery_batch` must not exceed the broker's
 *   in-flight window towards it: the PUBACKs for the batch go out after it is read).
 * Otherwise, and whenever publishing has stopped, it wakes for every byte; and only if the broker
 * writes a few packets at a time (batch_lowat below). A connection that waits for
 * a batch and was not read for BATCH_STALL_NS is read anyway (run_until), so a broker that does not
 * send what it owes delays the generator by at most that much. Paced runs never batch. */
static int batch_wanted(const struct conn *c)
{
    if (G.opt.qos == 0 || G.opt.rate > 0 || c->state != ST_READY)
        return 1;
    if (c->pub) {
        uint32_t k = (uint32_t)G.opt.ack_batch;
        return k > 1 && G.publishing && c->pub->inflight >= k ? 4 * (int)k : 1;
    }
    if (c->sub) {
        uint64_t k = (uint64_t)G.opt.delivery_batch;
        if (k <= 1 || !G.deliveries_batch || subscriber_backlog(c->sub) < k)
            return 1;
        return (int)(k * G.pubs[0].tpl.bytes.len);
    }
    return 1;
}

/* Only brokers that write a few packets at a time are waited for. One that already writes whole
 * windows of acknowledgements or deliveries (edgebus) may be waiting for the generator's answer before
 * it writes more (a commit, an in-flight window): waiting for a batch would only slow it down. So each
 * connection first reads as usual and measures what one read brings; it batches only if that was less
 * than half a batch. */
static int batch_lowat(const struct conn *c)
{
    return c->batching > 0 ? batch_wanted(c) : 1;
}

static void batch_probe(struct conn *c, size_t bytes)
{
    int want = batch_wanted(c);
    if (want <= 1)
        return;
    c->probe_bytes += bytes;
    if (++c->probe_reads == PROBE_READS)
        c->batching = c->probe_bytes * 2 < (uint64_t)want * PROBE_READS ? 1 : -PROBE_AGAIN_READS;
}

static void conn_batch(struct conn *c)
{
    if (G.opt.qos == 0 || c->state == ST_CLOSED)
        return;
    int want = batch_lowat(c);
    if (want == c->lowat)
        return;
    set_rcvlowat(c, want);
    if ((want > 1) != (c->lowat > 1)) {
        if (want > 1)
            G.waiting_for_batches++;
        else
            G.waiting_for_batches--;
    }
    c->lowat = want;
    c->last_read_ns = now_ns();
}

/* Every QoS 1/2 client re-decides whether it waits for a batch (after publishing starts or stops). */
static void batch_all(void)
{
    for (size_t i = 0; i < G.npubs; i++)
        conn_batch(G.pubs[i].conn);
    for (size_t i = 0; i < G.nsubs; i++)
        if (G.subs[i].conn)
            conn_batch(G.subs[i].conn);
}

/* A QoS 0 subscriber owes the broker nothing, so while messages flow it may wait for `rcvlowat` bytes
 * before epoll wakes it: a broker that writes every delivery with its own send() then costs the
 * generator one wake-up and one recv() per few KiB, not per packet. (QoS 1/2 subscribers must answer
 * at once: the broker's in-flight window waits for their acknowledgements.) */
static void subscribers_batch_reads(bool batch)
{
    if (G.opt.qos != 0 || G.opt.rcvlowat <= 1)
        return;
    for (size_t i = 0; i < G.nsubs; i++)
        if (G.subs[i].conn)
            set_rcvlowat(G.subs[i].conn, batch ? G.opt.rcvlowat : 1);
}

static void conn_ready(struct conn *c)
{
    c->state = ST_READY;
    G.setting_up--;
    if (G.opt.mode == MODE_IDLE)
        idle_top_up();
}

/* ------------------------------------------------------------------------------------ publishers */

static void publisher_init(struct publisher *p, uint32_t id, uint64_t limit)
{
    char client_id[64];
    p->id = id;
    p->limit = limit;
    p->next_pid = 1;
    snprintf(client_id, sizeof client_id, "%s-pub%u", G.opt.prefix, id);
    p->conn = conn_new(ROLE_PUBLISHER, client_id, true, NULL);
    p->conn->pub = p;
    template_init(&p->tpl, G.opt.topic, G.opt.qos, G.opt.payload);
    if (G.opt.qos) {
        p->seq_of_pid = xcalloc(MAX_PACKET_ID + 1, sizeof *p->seq_of_pid);
        p->sent_ns_of_pid = xcalloc(MAX_PACKET_ID + 1, sizeof *p->sent_ns_of_pid);
    }
}

/* A packet id not in flight [MQTT-2.3.1-2]; the caller has checked that the window has room. */
static uint16_t publisher_take_pid(struct publisher *p)
{
    while (p->seq_of_pid[p->next_pid])
        p->next_pid = p->next_pid == MAX_PACKET_ID ? 1 : p->next_pid + 1;
    uint16_t pid = p->next_pid;
    p->next_pid = pid == MAX_PACKET_ID ? 1 : pid + 1;
    return pid;
}

/* Append one PUBLISH with the next sequence number to the publisher's output. */
static void publisher_append(struct publisher *p, uint64_t now)
{
    struct conn *c = p->conn;
    uint8_t *packet = buf_extend(&c->out, p->tpl.bytes.len);
    memcpy(packet, p->tpl.bytes.data, p->tpl.bytes.len);
    struct header h = {.publisher = p->id, .seq = p->next_seq, .sent_ns = now};
    header_write(packet + p->tpl.payload_offset, &h);
    if (G.opt.qos) {
        uint16_t pid = publisher_take_pid(p);
        put_u16(packet + p->tpl.packet_id_offset, pid);
        p->seq_of_pid[pid] = p->next_seq + 1;
        p->sent_ns_of_pid[pid] = now;
        p->inflight++;
    }
    p->next_seq++;
}

static uint64_t publisher_room(const struct publisher *p, uint64_t wanted)
{
    if (p->limit && p->next_seq + wanted > p->limit)
        wanted = p->limit > p->next_seq ? p->limit - p->next_seq : 0;
    return wanted;
}

/* QoS 0 has no acknowledgement, so an unbounded publisher would run megabytes ahead into the socket
 * buffers. Each batch ends with a PINGREQ: a broker that handles a connection's packets in order has
 * read the batch when the PINGRESP comes back [MQTT-3.12.4-1], and at most `batches_ahead` are open. */
static void publisher_fill_qos0(struct publisher *p, uint64_t now)
{
    while (p->unanswered_batches < (uint32_t)G.opt.batches_ahead) {
        uint64_t n = publisher_room(p, (uint64_t)G.opt.batch);
        if (!n)
            return;
        for (uint64_t i = 0; i < n; i++)
            publisher_append(p, now);
        buf_append(&p->conn->out, PINGREQ_PACKET, sizeof PINGREQ_PACKET);
        p->unanswered_batches++;
    }
}

/* QoS 1/2 unpaced: top the window up after every chunk of acknowledgements. (Topping up only once a
 * quarter of the window is free was tried: fewer send() calls, as many recv() calls, no less CPU.) */
static void publisher_fill_window(struct publisher *p, uint64_t now)
{
    uint64_t n = publisher_room(p, (uint64_t)G.opt.window - p->inflight);
    for (uint64_t i = 0; i < n; i++)
        publisher_append(p, now);
}

/* Add what the publisher may send now, and send it with one send(). Paced publishers send from the
 * timer instead (publish_due). */
static void publisher_fill(struct publisher *p)
{
    struct conn *c = p->conn;
    if (!G.publishing || G.opt.rate > 0 || c->state != ST_READY || c->out.len > OUT_HIGH_WATER)
        return;
    uint64_t now = now_ns();
    if (G.opt.qos == 0)
        publisher_fill_qos0(p, now);
    else
        publisher_fill_window(p, now);
}

/* Paced publishing: every publisher sends what its rate makes due since publishing started, so the
 * average rate is exact whatever the timer's jitter. A due message that finds the window full is
 * skipped and counted. */
static void publish_due(void)
{
    uint64_t timer_expirations;
    if (read(G.timer_fd, &timer_expirations, sizeof timer_expirations) < 0 && errno != EAGAIN)
        die("read timerfd");
    if (!G.publishing)
        return;
    uint64_t now = now_ns();
    uint64_t should = (uint64_t)((double)(now - G.pace_start_ns) * G.opt.rate / 1e9);
    uint64_t due = should - G.paced_scheduled;
    G.paced_scheduled = should;
    for (size_t i = 0; i < G.npubs && due; i++) {
        struct publisher *p = &G.pubs[i];
        if (p->conn->state != ST_READY)
            continue;
        uint64_t room = G.opt.qos ? (uint64_t)G.opt.window - p->inflight : due;
        uint64_t n = publisher_room(p, due < room ? due : room);
        if (n < due)
            p->window_full += due - n;
        for (uint64_t k = 0; k < n; k++)
            publisher_append(p, now);
        conn_flush(p->conn);
    }
}

static void publisher_on_ack(struct publisher *p, uint16_t pid, uint64_t now)
{
    uint64_t seq_plus_one = p->seq_of_pid[pid];
    if (!seq_plus_one) {
        p->stray_acks++;
        return;
    }
    p->seq_of_pid[pid] = 0;
    p->inflight--;
    p->acked++;
    bitset_set(&p->acked_seqs, seq_plus_one - 1);
    uint64_t sent = p->sent_ns_of_pid[pid];
    if (sent >= G.window_start_ns && sent < G.window_end_ns)
        histogram_record(&G.ack, now - sent);
}

static bool publishers_idle(void)
{
    for (size_t i = 0; i < G.npubs; i++) {
        const struct publisher *p = &G.pubs[i];
        if (p->conn->state == ST_READY && (p->inflight || p->unanswered_batches || p->conn->out.len))
            return false;
    }
    return true;
}

/* ------------------------------------------------------------------------------------ subscribers */

static void subscriber_init(struct subscriber *s, size_t index)
{
    snprintf(s->client_id, sizeof s->client_id, "%s-sub%zu", G.opt.prefix, index);
    s->streams = xcalloc(G.npubs, sizeof *s->streams);
}

static struct conn *subscriber_connect(struct subscriber *s, bool subscribe)
{
    const char *filter = subscribe ? G.opt.topic : NULL;
    struct conn *c = conn_new(ROLE_SUBSCRIBER, s->client_id, !G.opt.persistent, filter);
    c->sub = s;
    s->conn = c;
    conn_open(c);
    return c;
}

static uint64_t subscriber_backlog(const struct subscriber *s)
{
    uint64_t backlog = 0;
    for (size_t p = 0; p < G.npubs; p++) {
        uint64_t owed = G.pubs[p].next_seq, have = s->streams[p].unique;
        backlog += owed > have ? owed - have : 0;
    }
    return backlog;
}

/* The audit of one delivered payload: which publisher, which sequence number, seen before or not. */
static void subscriber_on_payload(struct subscriber *s, const uint8_t *payload, size_t len, uint64_t now)
{
    struct header h;
    s->last_arrival_ns = now;
    if (!header_read(payload, len, &h) || h.publisher >= G.npubs || h.seq >= G.pubs[h.publisher].next_seq) {
        s->foreign++;
        return;
    }
    struct stream *st = &s->streams[h.publisher];
    if (bitset_test(&st->seen, h.seq)) {
        st->duplicated++;
        return;
    }
    bitset_set(&st->seen, h.seq);
    st->unique++;
    if (h.seq < st->next_expected)
        st->reordered++;
    else
        st->next_expected = h.seq + 1;
    if (h.sent_ns >= G.window_start_ns && h.sent_ns < G.window_end_ns)
        histogram_record(&G.e2e, now - h.sent_ns);
}

/* PUBLISH to a subscriber: count and audit it; answer QoS 1 with PUBACK [MQTT-4.3.2-2] and QoS 2 with
 * PUBREC [MQTT-4.3.3-2] (added to the output, which is sent once per received chunk). */
static void subscriber_on_publish(struct conn *c, uint8_t first, const uint8_t *body, size_t len,
                                  uint64_t now)
{
    struct subscriber *s = c->sub;
    int qos = first >> 1 & 3;
    size_t pos = 2;
    if (len < 2 || qos == 3 || (pos += get_u16(body)) + (qos ? 2 : 0) > len) {
        protocol_error(c, "malformed PUBLISH");
        return;
    }
    if (qos) {
        append_ack(&c->out, qos == 1 ? PUBACK_BYTE : PUBREC_BYTE, get_u16(body + pos));
        pos += 2;
    }
    s->received++;
    if (first & 0x08)
        s->dup_flagged++;
    subscriber_on_payload(s, body + pos, len - pos, now);
}

/* ------------------------------------------------------------------------------------ packet dispatch */

static void on_connack(struct conn *c, const uint8_t *body, size_t len)
{
    if (c->state != ST_AWAIT_CONNACK || len != 2) {
        protocol_error(c, "unexpected CONNACK");
        return;
    }
    if (body[1] != 0) {
        char code[16];
        snprintf(code, sizeof code, "code %u", body[1]);
        conn_lost(c, code);
        return;
    }
    c->session_present = body[0] & 1;
    if (c->subscribe_after_connack) {
        c->state = ST_AWAIT_SUBACK;
        append_subscribe(&c->out, 1, c->filter, c->role == ROLE_IDLE ? 1 : G.opt.qos);
    } else {
        conn_ready(c);
    }
}

static void on_suback(struct conn *c, const uint8_t *body, size_t len)
{
    if (c->state != ST_AWAIT_SUBACK || len != 3) {
        protocol_error(c, "unexpected SUBACK");
        return;
    }
    if (body[2] == 0x80) {
        conn_lost(c, "SUBSCRIBE refused");
        return;
    }
    conn_ready(c);
}

static void on_packet(struct conn *c, uint8_t first, const uint8_t *body, size_t len, uint64_t now)
{
    struct publisher *p = c->pub;
    int type = first >> 4;
    bool ack_shaped = len == 2;
    if (type == CONNACK) {
        on_connack(c, body, len);
    } else if (type == SUBACK) {
        on_suback(c, body, len);
    } else if (type == PUBLISH && c->sub) {
        subscriber_on_publish(c, first, body, len, now);
    } else if (type == PUBREL && c->sub && ack_shaped) {
        append_ack(&c->out, PUBCOMP_BYTE, get_u16(body)); /* [MQTT-4.3.3-2] */
    } else if (p && ack_shaped
               && ((type == PUBACK && G.opt.qos == 1) || (type == PUBCOMP && G.opt.qos == 2))) {
        publisher_on_ack(p, get_u16(body), now);
    } else if (p && ack_shaped && type == PUBREC && G.opt.qos == 2) {
        append_ack(&c->out, PUBREL_BYTE, get_u16(body)); /* [MQTT-4.3.3-1] */
    } else if (type == PINGRESP && len == 0) {
        if (p && p->unanswered_batches)
            p->unanswered_batches--;
    } else {
        char what[48];
        snprintf(what, sizeof what, "unexpected packet type %d (length %zu)", type, len);
        protocol_error(c, what);
    }
}

/* Frame and handle the complete packets in data; return how many bytes they took. */
static size_t consume_input(struct conn *c, const uint8_t *data, size_t len, uint64_t now)
{
    size_t pos = 0;
    while (pos + 2 <= len && c->state != ST_CLOSED) {
        uint32_t remaining;
        size_t varint_len;
        int r = decode_varint(data + pos + 1, len - pos - 1, &remaining, &varint_len);
        if (r < 0) {
            protocol_error(c, "remaining length longer than 4 bytes");
            return len;
        }
        if (r == 0 || pos + 1 + varint_len + remaining > len)
            break;
        on_packet(c, data[pos], data + pos + 1 + varint_len, remaining, now);
        pos += 1 + varint_len + remaining;
    }
    return c->state == ST_CLOSED ? len : pos;
}

/* Read one chunk; handle its packets, keeping a partial packet for the next read. The arrival time of
 * the chunk is the delivery time of every message in it. */
static ssize_t conn_read(struct conn *c)
{
    ssize_t n = recv(c->fd, G.recv_buffer, RECV_BUFFER_BYTES, 0);
    G.stat_recv[c->pub ? 0 : 1]++;
    if (n > 0)
        G.stat_recv_bytes[c->pub ? 0 : 1] += (uint64_t)n;
    if (n == 0) {
        conn_lost(c, "closed by the broker");
        return 0;
    }
    if (n < 0) {
        if (errno != EAGAIN && errno != EINTR)
            conn_lost(c, strerror(errno));
        return n;
    }
    uint64_t now = now_ns();
    c->last_read_ns = now;
    if (c->batching < 0 && ++c->batching == 0)
        c->probe_reads = 0, c->probe_bytes = 0;
    else if (c->batching == 0 && G.opt.qos)
        batch_probe(c, (size_t)n);
    if (c->in.len) {
        buf_append(&c->in, G.recv_buffer, (size_t)n);
        size_t used = consume_input(c, c->in.data, c->in.len, now);
        if (c->state != ST_CLOSED)
            buf_consume(&c->in, used);
    } else {
        size_t used = consume_input(c, G.recv_buffer, (size_t)n, now);
        if (c->state != ST_CLOSED && used < (size_t)n)
            buf_append(&c->in, G.recv_buffer + used, (size_t)n - used);
    }
    if (c->state != ST_CLOSED && c->in.len == 0 && c->in.cap > 4096)
        buf_release(&c->in);
    return n;
}

/* After input or writability: top the publisher up and send everything with one send(). */
static void conn_service(struct conn *c)
{
    if (c->state == ST_CLOSED)
        return;
    if (c->pub)
        publisher_fill(c->pub);
    conn_flush(c);
    conn_batch(c);
}

static void on_event(const struct epoll_event *ev)
{
    if (ev->data.ptr == &G.timer_fd) {
        publish_due();
        return;
    }
    struct conn *c = ev->data.ptr;
    if (c->state == ST_CLOSED)
        return;
    if (c->state == ST_CONNECTING) {
        on_connect_finished(c);
        return;
    }
    if (ev->events & (EPOLLIN | EPOLLHUP | EPOLLERR))
        conn_read(c);
    conn_service(c);
}

/* ------------------------------------------------------------------------------------ event loop */

typedef bool (*condition)(void);

/* A connection waiting for a batch that has not come for BATCH_STALL_NS: take what is there. */
static void read_stalled_batches(void)
{
    uint64_t now = now_ns();
    for (size_t i = 0; i < G.npubs + G.nsubs; i++) {
        struct conn *c = i < G.npubs ? G.pubs[i].conn : G.subs[i - G.npubs].conn;
        if (c && c->state == ST_READY && c->lowat > 1 && now - c->last_read_ns >= BATCH_STALL_NS) {
            c->last_read_ns = now;
            if (conn_read(c) > 0) {
                /* The broker paused with the batch unfilled: read everything as it comes for a while
                 * (it may be waiting for the generator), then measure again. */
                G.stat_stalls++;
                c->batching = -PROBE_AFTER_STALL_READS;
            }
            conn_service(c);
        }
    }
}

/* Handle events until done() holds (checked between batches of events) or the deadline passes;
 * return whether done() held. */
static bool run_until(condition done, uint64_t deadline_ns)
{
    struct epoll_event events[MAX_EVENTS];
    for (;;) {
        if (done && done())
            return true;
        uint64_t now = now_ns();
        if (now >= deadline_ns)
            return false;
        uint64_t wait_ms = (deadline_ns - now + NS_PER_MS - 1) / NS_PER_MS;
        uint64_t cap_ms = G.waiting_for_batches ? BATCH_STALL_NS / NS_PER_MS : 1000;
        int n = epoll_wait(G.epoll_fd, events, MAX_EVENTS, wait_ms > cap_ms ? (int)cap_ms : (int)wait_ms);
        if (n < 0 && errno != EINTR)
            die("epoll_wait");
        G.stat_wait++;
        if (n > 0)
            G.stat_events += (uint64_t)n;
        for (int i = 0; i < n; i++)
            on_event(&events[i]);
        if (G.waiting_for_batches)
            read_stalled_batches();
    }
}

static uint64_t after_s(double seconds) { return now_ns() + (uint64_t)(seconds * 1e9); }

static bool setup_finished(void) { return G.setting_up == 0; }

static void start_timer(void)
{
    G.timer_fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (G.timer_fd < 0)
        die("timerfd_create");
    /* A tick per due message, at most every 50 us: each tick sends what is due. */
    uint64_t period = (uint64_t)(1e9 / G.opt.rate);
    if (period < 50 * NS_PER_US)
        period = 50 * NS_PER_US;
    struct itimerspec spec = {
        .it_interval = {.tv_sec = (time_t)(period / NS_PER_S), .tv_nsec = (long)(period % NS_PER_S)},
        .it_value = {.tv_sec = (time_t)(period / NS_PER_S), .tv_nsec = (long)(period % NS_PER_S)},
    };
    if (timerfd_settime(G.timer_fd, 0, &spec, NULL) < 0)
        die("timerfd_settime");
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &G.timer_fd};
    if (epoll_ctl(G.epoll_fd, EPOLL_CTL_ADD, G.timer_fd, &ev) < 0)
        die("epoll_ctl");
}

static void start_publishing(void)
{
    G.publishing = true;
    G.pace_start_ns = now_ns();
    if (G.opt.rate > 0) {
        start_timer();
        return;
    }
    for (size_t i = 0; i < G.npubs; i++)
        conn_service(G.pubs[i].conn);
}

/* Connect the publishers (no subscription) and wait until every one is ready. */
static bool connect_publishers(void)
{
    for (size_t i = 0; i < G.npubs; i++)
        conn_open(G.pubs[i].conn);
    return run_until(setup_finished, now_ns() + SETUP_TIMEOUT_NS) && G.connect_failures == 0;
}

static bool connect_subscribers(bool subscribe)
{
    for (size_t i = 0; i < G.nsubs; i++)
        subscriber_connect(&G.subs[i], subscribe);
    return run_until(setup_finished, now_ns() + SETUP_TIMEOUT_NS) && G.connect_failures == 0;
}

/* Every subscriber has every message it is owed: QoS 0, all that was sent; QoS 1/2, all acknowledged. */
static bool all_delivered(void)
{
    for (size_t s = 0; s < G.nsubs; s++)
        for (size_t p = 0; p < G.npubs; p++) {
            uint64_t owed = G.opt.qos ? G.pubs[p].acked : G.pubs[p].next_seq;
            if (G.subs[s].streams[p].unique < owed)
                return false;
        }
    return true;
}

static bool idle_and_delivered(void) { return publishers_idle() && all_delivered(); }

/* After the publishers stopped: wait until the broker has read and acknowledged everything, then
 * until every owed message arrived or, for `quiet_s`, nothing arrived; `grace_s` at most in all.
 * Returns whether everything owed arrived. */
static bool settle(double quiet_s)
{
    uint64_t deadline = after_s(G.opt.grace_s);
    for (;;) {
        uint64_t before = total_received();
        uint64_t quiet_end = after_s(quiet_s);
        if (run_until(idle_and_delivered, quiet_end < deadline ? quiet_end : deadline))
            return true;
        if (now_ns() >= deadline)
            return false;
        /* Nothing in flight and nothing arrived for `quiet_s`: the rest is not coming. */
        if (total_received() == before && publishers_idle())
            return false;
    }
}

static void close_all(void)
{
    G.closing = true;
    for (size_t i = 0; i < G.nconns; i++) {
        struct conn *c = G.conns[i];
        if (c->state == ST_READY) {
            buf_append(&c->out, DISCONNECT_PACKET, sizeof DISCONNECT_PACKET);
            conn_flush(c);
        }
        conn_close(c);
    }
}

/* ------------------------------------------------------------------------------------ JSON output */

/* A minimal JSON writer onto one line of standard output (keys and strings are ours: only quotes,
 * backslashes and control characters need escaping). */
static bool json_comma[16];
static int json_depth;

static void json_key(const char *key)
{
    if (json_comma[json_depth])
        putchar(',');
    json_comma[json_depth] = true;
    if (key)
        printf("\"%s\":", key);
}

static void json_open(const char *key, char bracket)
{
    json_key(key);
    putchar(bracket);
    json_comma[++json_depth] = false;
}

static void json_close(char bracket)
{
    putchar(bracket);
    json_depth--;
}

static void json_u64(const char *key, uint64_t v) { json_key(key); printf("%" PRIu64, v); }
static void json_num(const char *key, double v) { json_key(key); printf("%.6g", v); }
static void json_bool(const char *key, bool v) { json_key(key); fputs(v ? "true" : "false", stdout); }

static void json_str(const char *key, const char *text)
{
    json_key(key);
    putchar('"');
    for (const char *p = text; *p; p++) {
        if (*p == '"' || *p == '\\')
            printf("\\%c", *p);
        else if ((unsigned char)*p < 0x20)
            printf("\\u%04x", (unsigned)(unsigned char)*p);
        else
            putchar(*p);
    }
    putchar('"');
}

static void json_latency(const char *key, const struct histogram *h)
{
    json_open(key, '{');
    json_u64("samples", h->count);
    if (h->count) {
        json_num("p50", histogram_percentile_us(h, 0.50));
        json_num("p99", histogram_percentile_us(h, 0.99));
        json_num("max", (double)h->max_ns / NS_PER_US);
    }
    json_close('}');
}

static void json_window(const char *key, const struct window *w)
{
    json_open(key, '{');
    json_num("seconds", w->seconds);
    json_num("gen_cpu_pct", w->cpu_pct);
    json_num("gen_user_s", w->user_s);
    json_num("gen_sys_s", w->sys_s);
    json_u64("sent", w->sent);
    json_u64("acked", w->acked);
    json_u64("delivered", w->delivered);
    json_close('}');
}

/* The books of the run, per publisher and in total. Owed: QoS 0, everything sent; QoS 1/2, everything
 * acknowledged (PUBACK / PUBCOMP). Lost: owed to a subscriber but never delivered to it. */
static void json_audit(void)
{
    uint64_t sent = 0, acked = 0, owed = 0, unique = 0, lost = 0, dup = 0, reord = 0, stray = 0;
    json_open("per_publisher", '[');
    for (size_t p = 0; p < G.npubs; p++) {
        struct publisher *pub = &G.pubs[p];
        struct bitset everything = {0};
        const struct bitset *owed_set = &pub->acked_seqs;
        if (G.opt.qos == 0) {
            bitset_fill(&everything, pub->next_seq);
            owed_set = &everything;
        }
        uint64_t p_owed = (G.opt.qos ? pub->acked : pub->next_seq) * G.nsubs;
        uint64_t p_unique = 0, p_lost = 0, p_dup = 0, p_reord = 0;
        for (size_t s = 0; s < G.nsubs; s++) {
            const struct stream *st = &G.subs[s].streams[p];
            p_unique += st->unique;
            p_lost += bitset_missing(owed_set, &st->seen);
            p_dup += st->duplicated;
            p_reord += st->reordered;
        }
        free(everything.words);
        json_open(NULL, '{');
        json_u64("id", pub->id);
        json_u64("sent", pub->next_seq);
        json_u64("acked", pub->acked);
        json_u64("owed", p_owed);
        json_u64("delivered_unique", p_unique);
        json_u64("lost", p_lost);
        json_u64("duplicated", p_dup);
        json_u64("reordered", p_reord);
        json_close('}');
        sent += pub->next_seq;
        acked += pub->acked;
        owed += p_owed;
        unique += p_unique;
        lost += p_lost;
        dup += p_dup;
        reord += p_reord;
        stray += pub->stray_acks;
    }
    json_close(']');
    uint64_t foreign = 0, flagged = 0, received = 0;
    for (size_t s = 0; s < G.nsubs; s++) {
        foreign += G.subs[s].foreign;
        flagged += G.subs[s].dup_flagged;
        received += G.subs[s].received;
    }
    json_u64("sent", sent);
    json_u64("acked", acked);
    json_u64("unacked", G.opt.qos ? sent - acked : 0);
    json_u64("owed", owed);
    json_u64("received", received);
    json_u64("delivered_unique", unique);
    json_u64("lost", lost);
    json_u64("lost_acked", G.opt.qos ? lost : 0);
    json_u64("duplicated", dup);
    json_u64("reordered", reord);
    json_u64("foreign", foreign);
    json_u64("dup_flagged", flagged);
    json_u64("stray_acks", stray);
}

static void json_result_begin(const char *mode)
{
    fputs("result ", stdout);
    json_depth = 0;
    json_comma[0] = false;
    json_open(NULL, '{');
    json_str("mode", mode);
    json_u64("qos", (uint64_t)G.opt.qos);
    json_u64("publishers", G.npubs);
    json_u64("subscribers", G.nsubs);
    json_u64("payload", G.opt.payload);
}

static void json_result_end(void)
{
    json_u64("protocol_errors", G.protocol_errors);
    json_u64("connect_failures", G.connect_failures);
    json_u64("closed_unexpectedly", G.closed_unexpectedly);
    json_str("first_error", G.first_error);
    json_close('}');
    putchar('\n');
    fflush(stdout);
}

/* ------------------------------------------------------------------------------------ modes */

static void make_clients(size_t npubs, size_t nsubs, uint64_t limit_per_publisher)
{
    G.npubs = npubs;
    G.pubs = xcalloc(npubs, sizeof *G.pubs);
    for (size_t i = 0; i < npubs; i++)
        publisher_init(&G.pubs[i], (uint32_t)i, limit_per_publisher);
    G.nsubs = nsubs;
    G.subs = xcalloc(nsubs, sizeof *G.subs);
    for (size_t i = 0; i < nsubs; i++)
        subscriber_init(&G.subs[i], i);
}

static int fail_setup(const char *mode)
{
    fprintf(stderr, "mqttgen: %s: set-up failed: %s\n", mode, G.first_error);
    json_result_begin(mode);
    json_bool("complete", false);
    json_result_end();
    return 1;
}

/* Publishers -> subscribers on one topic: warm-up, a measurement window, then the books. Used for
 * fan-in, fan-out, paced latency and durable runs. */
static int run_flow(void)
{
    make_clients((size_t)G.opt.publishers, (size_t)G.opt.subscribers, 0);
    if (!connect_subscribers(true) || !connect_publishers())
        return fail_setup("flow");
    subscribers_batch_reads(true);
    G.deliveries_batch = true;
    start_publishing();
    run_until(NULL, after_s(G.opt.warmup_s));

    struct window w;
    G.window_start_ns = now_ns();
    mark("window-start");
    window_open(&w);
    run_until(NULL, after_s(G.opt.duration_s));
    window_close(&w);
    G.window_end_ns = now_ns();
    mark("window-end");

    G.publishing = false;
    /* Back to waking up for every byte: the last messages must not wait for more that never come. */
    subscribers_batch_reads(false);
    G.deliveries_batch = false;
    batch_all();
    uint64_t paced_sent_in_window = w.sent;
    bool complete = settle(G.opt.qos ? G.opt.grace_s : G.opt.quiet_s);
    close_all();

    json_result_begin("flow");
    json_window("window", &w);
    json_bool("complete", complete);
    if (G.opt.rate > 0) {
        uint64_t full = 0;
        for (size_t i = 0; i < G.npubs; i++)
            full += G.pubs[i].window_full;
        json_num("target_rate_per_s", G.opt.rate * (double)G.npubs);
        json_num("sent_rate_per_s", w.seconds > 0 ? (double)paced_sent_in_window / w.seconds : 0);
        json_u64("window_full_events", full);
    }
    json_latency("latency_us", &G.e2e);
    json_latency("ack_latency_us", &G.ack);
    json_audit();
    json_result_end();
    return 0;
}

static bool publishers_done(void)
{
    for (size_t i = 0; i < G.npubs; i++)
        if (G.pubs[i].next_seq < G.pubs[i].limit || G.pubs[i].inflight)
            return false;
    return true;
}

/* A persistent subscriber subscribes and leaves; the publishers queue `messages` for it; it comes back
 * and the broker delivers the queue. Timed: from sending CONNECT to the last message. */
static int run_drain(void)
{
    G.opt.persistent = true;
    size_t npubs = (size_t)G.opt.publishers;
    uint64_t per_publisher = (uint64_t)G.opt.messages / npubs;
    make_clients(npubs, 1, per_publisher);
    struct subscriber *s = &G.subs[0];
    if (!connect_subscribers(true))
        return fail_setup("drain");
    buf_append(&s->conn->out, DISCONNECT_PACKET, sizeof DISCONNECT_PACKET);
    conn_flush(s->conn);
    conn_close(s->conn);
    /* The broker marks the session away once it has read the DISCONNECT: wait a moment, so that no
     * message goes to the closing connection. */
    run_until(NULL, now_ns() + OFFLINE_SETTLE_NS);
    if (!connect_publishers())
        return fail_setup("drain");

    struct window queue, drain;
    mark("queue-start");
    window_open(&queue);
    start_publishing();
    bool queued_all = run_until(publishers_done, after_s(G.opt.duration_s + G.opt.grace_s));
    window_close(&queue);
    mark("queue-end");
    G.publishing = false;
    batch_all();
    G.deliveries_batch = true;

    mark("drain-start");
    window_open(&drain);
    uint64_t drain_start = drain.cpu_start.wall_ns;
    struct conn *back = subscriber_connect(s, false);
    bool complete = settle(G.opt.grace_s);
    G.deliveries_batch = false;
    window_close(&drain);
    mark("drain-end");
    bool session_present = back->session_present;
    close_all();

    uint64_t drained_unique = 0;
    for (size_t p = 0; p < G.npubs; p++)
        drained_unique += s->streams[p].unique;
    double drain_s = s->last_arrival_ns > drain_start ? (double)(s->last_arrival_ns - drain_start) / 1e9 : 0;

    json_result_begin("drain");
    json_bool("complete", complete && queued_all);
    json_bool("session_present", session_present);
    json_u64("queued", total_acked());
    json_window("queue_window", &queue);
    json_num("queued_per_s", queue.seconds > 0 ? (double)queue.acked / queue.seconds : 0);
    json_window("window", &drain);
    json_u64("drained", drained_unique);
    json_num("drain_s", drain_s);
    json_num("drain_per_s", drain_s > 0 ? (double)drained_unique / drain_s : 0);
    json_latency("ack_latency_us", &G.ack);
    json_audit();
    json_result_end();
    return 0;
}

static size_t idle_target;   /* connections the current idle step wants */
static size_t idle_opened;

/* Open idle connections while fewer than `concurrency` are being set up. */
static void idle_top_up(void)
{
    while (idle_opened < idle_target && G.setting_up < (size_t)G.opt.concurrency) {
        char client_id[64], filter[96];
        snprintf(client_id, sizeof client_id, "%s-idle%zu", G.opt.prefix, idle_opened);
        snprintf(filter, sizeof filter, "%s/%zu", G.opt.topic, idle_opened);
        idle_opened++;
        conn_open(conn_new(ROLE_IDLE, client_id, false, filter));
    }
}

static size_t open_connections(void)
{
    size_t open = 0;
    for (size_t i = 0; i < G.nconns; i++)
        open += G.conns[i]->state == ST_READY;
    return open;
}

static bool idle_step_done(void) { return idle_opened >= idle_target && G.setting_up == 0; }

/* Idle persistent sessions (clean session 0, each subscribed to its own topic at QoS 1): a few
 * warm-up clients connect and leave, then the driver reads the baseline RSS; then the generator holds
 * at each connection count so that the driver can read the RSS with all of them open. */
static int run_idle(void)
{
    for (int i = 0; i < G.opt.warmup_clients; i++) {
        char client_id[64], filter[96];
        snprintf(client_id, sizeof client_id, "%s-warmup%d", G.opt.prefix, i);
        snprintf(filter, sizeof filter, "%s/warmup/%d", G.opt.topic, i);
        conn_open(conn_new(ROLE_IDLE, client_id, true, filter));
    }
    if (!run_until(setup_finished, now_ns() + SETUP_TIMEOUT_NS) || G.connect_failures)
        return fail_setup("idle");
    close_all();
    G.closing = false;
    hold("baseline");

    struct window w[8];
    size_t open[8];
    char name[32];
    G.nconns = 0; /* the warm-up connections are closed; the idle ones are counted from here */
    for (int i = 0; i < G.opt.nsteps; i++) {
        window_open(&w[i]);
        idle_target = (size_t)G.opt.steps[i];
        idle_top_up();
        run_until(idle_step_done, now_ns() + IDLE_STEP_TIMEOUT_NS);
        window_close(&w[i]);
        open[i] = open_connections();
        snprintf(name, sizeof name, "connected-%ld", G.opt.steps[i]);
        hold(name);
    }
    size_t last = open_connections();
    close_all();

    json_result_begin("idle");
    json_bool("complete", last == (size_t)G.opt.steps[G.opt.nsteps - 1]);
    json_u64("connections", last);
    json_open("steps", '[');
    for (int i = 0; i < G.opt.nsteps; i++) {
        json_open(NULL, '{');
        json_u64("requested", (uint64_t)G.opt.steps[i]);
        json_u64("open", open[i]);
        json_num("connect_s", w[i].seconds);
        json_num("gen_cpu_pct", w[i].cpu_pct);
        json_close('}');
    }
    json_close(']');
    json_result_end();
    return 0;
}

/* ------------------------------------------------------------------------------------ self-test */

static int self_test_failures;

static void check(bool ok, const char *what)
{
    if (!ok) {
        fprintf(stderr, "self-test FAILED: %s\n", what);
        self_test_failures++;
    }
}

static void self_test_varint(void)
{
    static const uint32_t values[] = {0, 127, 128, 16383, 16384, 2097151, 2097152, 268435455};
    for (size_t i = 0; i < sizeof values / sizeof values[0]; i++) {
        uint8_t bytes[4];
        uint32_t back = 0;
        size_t n = encode_varint(bytes, values[i]), used = 0;
        check(decode_varint(bytes, n, &back, &used) == 1 && back == values[i] && used == n,
              "varint round trip");
        check(n == 1 || decode_varint(bytes, n - 1, &back, &used) == 0, "varint: incomplete");
    }
    static const uint8_t five[5] = {0x80, 0x80, 0x80, 0x80, 0x01};
    uint32_t v;
    size_t used;
    check(decode_varint(five, 5, &v, &used) == -1, "varint: fifth byte is malformed");
}

/* A stream that a QoS 1 subscriber could receive: two publishers' messages (one reordered, one
 * duplicated), a PUBREL and a PUBLISH with a 2-byte remaining length; framed whole and in odd chunk
 * sizes, it must give the same counts and the same acknowledgements. */
static void self_test_framer(void)
{
    G.opt.qos = 1;
    G.opt.payload = 64;
    G.opt.topic = "bench/self-test";
    G.opt.prefix = "self-test";
    make_clients(2, 1, 0);
    struct buf stream = {0};
    static const uint64_t order[][2] = {{0, 0}, {1, 0}, {0, 1}, {0, 3}, {0, 2}, {1, 1}, {0, 3}, {1, 2}};
    for (size_t i = 0; i < sizeof order / sizeof order[0]; i++) {
        struct publisher *p = &G.pubs[order[i][0]];
        size_t at = stream.len;
        buf_append(&stream, p->tpl.bytes.data, p->tpl.bytes.len);
        put_u16(stream.data + at + p->tpl.packet_id_offset, (uint16_t)(i + 1));
        struct header h = {.publisher = (uint32_t)order[i][0], .seq = order[i][1], .sent_ns = 1};
        header_write(stream.data + at + p->tpl.payload_offset, &h);
    }
    G.pubs[0].next_seq = 4;   /* what the publishers "sent" */
    G.pubs[1].next_seq = 3;
    append_ack(&stream, PUBREL_BYTE, 77);
    struct publish_template long_topic = {0};
    char topic[300];
    memset(topic, 't', sizeof topic - 1);
    topic[sizeof topic - 1] = 0;
    G.opt.qos = 0;
    template_init(&long_topic, topic, 0, 40);
    buf_append(&stream, long_topic.bytes.data, long_topic.bytes.len); /* no header: foreign */

    static const size_t chunks[] = {0, 1, 7, 83, 1000};
    struct buf first_replies = {0};
    for (size_t k = 0; k < sizeof chunks / sizeof chunks[0]; k++) {
        struct subscriber *s = &G.subs[0];
        free(s->streams);
        *s = (struct subscriber){0};
        subscriber_init(s, 0);
        struct conn c = {.fd = -1, .role = ROLE_SUBSCRIBER, .state = ST_READY, .sub = s};
        size_t chunk = chunks[k] ? chunks[k] : stream.len;
        for (size_t at = 0; at < stream.len; at += chunk) {
            size_t n = stream.len - at < chunk ? stream.len - at : chunk;
            buf_append(&c.in, stream.data + at, n);
            buf_consume(&c.in, consume_input(&c, c.in.data, c.in.len, 2));
        }
        check(c.state == ST_READY && c.in.len == 0, "framer: whole stream consumed");
        check(s->received == 9 && s->foreign == 1, "framer: 9 PUBLISH packets, 1 foreign");
        check(s->streams[0].unique == 4 && s->streams[0].duplicated == 1 && s->streams[0].reordered == 1,
              "audit: publisher 0 unique 4, duplicated 1, reordered 1");
        check(s->streams[1].unique == 3 && s->streams[1].duplicated == 0 && s->streams[1].reordered == 0,
              "audit: publisher 1 in order");
        check(c.out.len == 4 * 9, "framer: 8 PUBACKs and a PUBCOMP");
        if (k == 0)
            buf_append(&first_replies, c.out.data, c.out.len);
        else
            check(c.out.len == first_replies.len && !memcmp(c.out.data, first_replies.data, c.out.len),
                  "framer: the same replies whatever the chunking");
        buf_release(&c.in);
        buf_release(&c.out);
    }
    check(first_replies.len >= 4 && !memcmp(first_replies.data, "\x40\x02\x00\x01", 4),
          "framer: first reply is PUBACK 1");
    check(first_replies.len == 36 && !memcmp(first_replies.data + 32, "\x70\x02\x00\x4d", 4),
          "framer: PUBREL 77 answered with PUBCOMP 77");

    struct bitset owed = {0}, seen = {0};
    bitset_fill(&owed, 130);
    for (uint64_t i = 0; i < 130; i++)
        if (i != 5 && i != 64 && i != 129)
            bitset_set(&seen, i);
    check(bitset_missing(&owed, &seen) == 3, "audit: 3 owed messages missing");
}

static int run_self_test(void)
{
    self_test_varint();
    self_test_framer();
    puts(self_test_failures ? "self-test FAILED" : "self-test ok");
    return self_test_failures ? 1 : 0;
}

/* ------------------------------------------------------------------------------------ main */

/* Each connection is a descriptor: allow as many as the hard limit does. */
static void raise_nofile_limit(void)
{
    struct rlimit limit;
    if (getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur < limit.rlim_max) {
        limit.rlim_cur = limit.rlim_max;
        setrlimit(RLIMIT_NOFILE, &limit);
    }
}

int main(int argc, char **argv)
{
    G.opt = parse_options(argc, argv);
    G.window_start_ns = UINT64_MAX;
    G.window_end_ns = UINT64_MAX;
    if (G.opt.mode == MODE_SELF_TEST)
        return run_self_test();

    /* Die with the driver: a generator left behind would keep loading the next broker. */
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    signal(SIGPIPE, SIG_IGN);
    setvbuf(stdout, NULL, _IOLBF, 0);
    raise_nofile_limit();
    G.broker.sin_family = AF_INET;
    G.broker.sin_port = htons((uint16_t)G.opt.port);
    if (inet_pton(AF_INET, G.opt.host, &G.broker.sin_addr) != 1) {
        fprintf(stderr, "mqttgen: --host wants an IPv4 address: %s\n", G.opt.host);
        return 2;
    }
    G.epoll_fd = epoll_create1(EPOLL_CLOEXEC);
    if (G.epoll_fd < 0)
        die("epoll_create1");
    G.timer_fd = -1;
    G.recv_buffer = xcalloc(RECV_BUFFER_BYTES, 1);

    switch (G.opt.mode) {
    case MODE_DRAIN:
        return run_drain();
    case MODE_IDLE:
        return run_idle();
    default:
        return run_flow();
    }
}

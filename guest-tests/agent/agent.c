// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * dmalab-agent: serves the host on the virtio-serial port named "dmalab.agent".
 *
 * The protocol (agent-proto.h, generated from orchestrator/dmalab/spec/agent.py) is one
 * binary request, one binary reply. Requests flagged ASYNC run on a thread of their own, so a
 * request that blocks (a map waiting for an exclusive owner) does not stop the others. Bad input
 * of any kind gets an error reply naming an errno; the agent never exits on it.
 *
 * Usage: dmalab-agent [PORT]   (default: the port whose name is dmalab.agent;
 *                               "-": requests on stdin, replies on stdout)
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <linux/dma-buf.h>
#include <linux/dma-heap.h>
#include <linux/udmabuf.h>

#include "agent-proto.h"
#include "ncdma-uapi.h"

#define MAX_DEVS 16
#define MAX_BUFS 1024
#define MAX_ATTS 4096
#define MAX_PAGES_QUERY 65536
#define READ_BYTES_MAX (4u << 20)

_Static_assert(sizeof(struct agent_desc) == sizeof(struct ncdma_udesc), "descriptor layout");
_Static_assert(sizeof(struct agent_result) == sizeof(struct ncdma_result), "result layout");
_Static_assert(sizeof(struct agent_seg) == sizeof(struct ncdma_seg), "segment layout");
_Static_assert(sizeof(struct ncdma_drv_stats) == 8 * AGENT_DRIVER_STATS_SLOTS, "driver stats");
_Static_assert(NCDMA_DEV_COUNTERS_MAX == AGENT_DEVICE_COUNTERS_MAX, "device counters");

/* State: devices, buffers and attachments, all guarded by state_lock. Entries in use by a
 * request are "busy" and cannot be freed until it finishes. */

struct buf {
	int used;
	uint32_t kind;
	int fd;
	uint64_t size;
	uint8_t *map;
	int memfd;			/* UDMABUF: the memfd behind it (for page addresses) */
	int dev;			/* NCDMA: the exporting device */
	uint32_t handle[MAX_DEVS];	/* the buffer's handle on each device, 0: none */
	int busy;
};

struct att {
	int used;
	uint32_t buf;
	int dev;
	uint32_t handle;
	int busy;
};

static pthread_mutex_t state_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t out_lock = PTHREAD_MUTEX_INITIALIZER;
static int dev_fd[MAX_DEVS];
static struct buf bufs[MAX_BUFS];
static struct att atts[MAX_ATTS];
static int port_fd = -1;	/* requests */
static int reply_fd = -1;	/* replies: the port too, or stdout */
static long page_size;

/* A reply under construction. */
struct out {
	uint8_t *data;
	size_t len, cap;
	char err[256];
};

static void *out_grow(struct out *o, size_t n)
{
	void *p;

	if (o->len + n > o->cap) {
		size_t cap = o->cap ? o->cap : 256;
		uint8_t *data;

		while (cap < o->len + n)
			cap *= 2;
		data = realloc(o->data, cap);
		if (!data)
			return NULL;
		o->data = data;
		o->cap = cap;
	}
	p = o->data + o->len;
	memset(p, 0, n);
	o->len += n;
	return p;
}

static int out_put(struct out *o, const void *src, size_t n)
{
	void *p = out_grow(o, n);

	if (!p)
		return ENOMEM;
	if (n)
		memcpy(p, src, n);
	return 0;
}

static int fail(struct out *o, int err, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(o->err, sizeof(o->err), fmt, ap);
	va_end(ap);
	return err;
}

/* A request: its header and payload (owned). */
struct req {
	struct agent_header h;
	uint8_t *p;
	uint32_t len;
};

/* I/O on the port */

static int write_full(int fd, const void *buf, size_t n)
{
	const uint8_t *p = buf;

	while (n) {
		ssize_t k = write(fd, p, n);

		if (k < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN) {
				struct pollfd pfd = { .fd = fd, .events = POLLOUT };

				poll(&pfd, 1, 100);
				continue;
			}
			return -1;
		}
		p += k;
		n -= k;
	}
	return 0;
}

/* Read exactly n bytes; waits while the host is not connected. */
static void read_full(int fd, void *buf, size_t n)
{
	uint8_t *p = buf;

	while (n) {
		ssize_t k = read(fd, p, n);

		if (k > 0) {
			p += k;
			n -= k;
		} else if (k == 0 && fd == STDIN_FILENO) {
			exit(0);	/* stdio mode: the host is gone for good */
		} else if (k == 0 || errno == EAGAIN) {
			/* A virtio-serial port reads end-of-file while no host is connected. */
			struct pollfd pfd = { .fd = fd, .events = POLLIN };

			if (poll(&pfd, 1, 100) <= 0 || (pfd.revents & POLLHUP))
				usleep(10000);
		} else if (errno != EINTR) {
			usleep(10000);
		}
	}
}

static void send_reply(const struct agent_header *rq, uint32_t status, const void *payload,
		       size_t len)
{
	struct agent_header h = {
		.magic = AGENT_MAGIC,
		.version = AGENT_VERSION,
		.op = rq->op,
		.seq = rq->seq,
		.flags = AGENT_F_REPLY,
		.status = status,
		.length = (uint32_t)len,
	};

	pthread_mutex_lock(&out_lock);
	if (write_full(reply_fd, &h, sizeof(h)) == 0 && len)
		write_full(reply_fd, payload, len);
	pthread_mutex_unlock(&out_lock);
}

static void send_error(const struct agent_header *rq, int err, const char *msg)
{
	send_reply(rq, (uint32_t)err, msg, strlen(msg));
}

/* Guarded CPU access: a SIGBUS or SIGSEGV while touching a buffer fails the request. */

static __thread sigjmp_buf *cpu_guard;

static void on_fault(int sig)
{
	if (cpu_guard)
		siglongjmp(*cpu_guard, sig);
	signal(sig, SIG_DFL);
	raise(sig);
}

/* Devices, buffers and attachments by id */

static int dev_open(int dev, struct out *o)
{
	char path[32];
	int fd;

	if (dev < 0 || dev >= MAX_DEVS)
		return fail(o, ENODEV, "device %d out of range", dev);
	if (dev_fd[dev] >= 0)
		return 0;
	snprintf(path, sizeof(path), "/dev/ncdma%d", dev);
	fd = open(path, O_RDWR | O_CLOEXEC);
	if (fd < 0)
		return fail(o, errno, "open %s: %s", path, strerror(errno));
	dev_fd[dev] = fd;
	return 0;
}

/* The device's fd for a request (opened on first use). */
static int dev_get(uint32_t dev, int *fd, struct out *o)
{
	int err;

	pthread_mutex_lock(&state_lock);
	err = dev_open((int)dev, o);
	if (!err)
		*fd = dev_fd[dev];
	pthread_mutex_unlock(&state_lock);
	return err;
}

static struct buf *buf_lookup(uint32_t id)
{
	if (id == 0 || id > MAX_BUFS || !bufs[id - 1].used)
		return NULL;
	return &bufs[id - 1];
}

static struct att *att_lookup(uint32_t id)
{
	if (id == 0 || id > MAX_ATTS || !atts[id - 1].used)
		return NULL;
	return &atts[id - 1];
}

/* Mark a buffer busy and return a copy of it. */
static int buf_hold(uint32_t id, struct buf *copy, struct out *o)
{
	struct buf *b;

	pthread_mutex_lock(&state_lock);
	b = buf_lookup(id);
	if (b) {
		b->busy++;
		*copy = *b;
	}
	pthread_mutex_unlock(&state_lock);
	return b ? 0 : fail(o, ENOENT, "no buffer %u", id);
}

static void buf_release(uint32_t id)
{
	pthread_mutex_lock(&state_lock);
	bufs[id - 1].busy--;
	pthread_mutex_unlock(&state_lock);
}

static int att_hold(uint32_t id, struct att *copy, int *fd, struct out *o)
{
	struct att *a;

	pthread_mutex_lock(&state_lock);
	a = att_lookup(id);
	if (a) {
		a->busy++;
		*copy = *a;
		*fd = dev_fd[a->dev];
	}
	pthread_mutex_unlock(&state_lock);
	return a ? 0 : fail(o, ENOENT, "no attachment %u", id);
}

static void att_release(uint32_t id)
{
	pthread_mutex_lock(&state_lock);
	atts[id - 1].busy--;
	pthread_mutex_unlock(&state_lock);
}

static int xioctl(int fd, unsigned long cmd, void *arg, const char *what, struct out *o)
{
	int ret;

	do {
		ret = ioctl(fd, cmd, arg);
	} while (ret < 0 && (errno == EINTR || errno == EAGAIN) && cmd == DMA_BUF_IOCTL_SYNC);
	if (ret < 0)
		return fail(o, errno, "%s: %s", what, strerror(errno));
	return 0;
}

/* The handle of buffer b on any device that has one (the exporter's first); -1 if none. */
static int buf_any_device(const struct buf *b)
{
	int d;

	if (b->kind == AGENT_BUF_NCDMA)
		return b->dev;
	for (d = 0; d < MAX_DEVS; d++)
		if (b->handle[d])
			return d;
	return -1;
}

/* Range checks */

static int check_range(uint64_t size, uint64_t off, uint64_t len, struct out *o)
{
	if (off > size || len > size - off)
		return fail(o, ERANGE, "range %#llx+%#llx outside the buffer (%#llx bytes)",
			    (unsigned long long)off, (unsigned long long)len,
			    (unsigned long long)size);
	return 0;
}

/* The pattern generator: xorshift64 (13, 7, 17), one little-endian word per 8 bytes. */

static uint64_t pattern_state(uint64_t seed)
{
	uint64_t s = seed ^ AGENT_PATTERN_MIX;

	return s ? s : AGENT_PATTERN_MIX;
}

static uint64_t pattern_next(uint64_t *s)
{
	uint64_t x = *s;

	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	*s = x;
	return x;
}

/* Fill dst with bytes [pos, pos + n) of pattern(seed), for pos a multiple of 8 from state. */
static void pattern_fill(uint8_t *dst, size_t n, uint64_t *state)
{
	while (n) {
		uint64_t w = pattern_next(state);
		uint8_t le[8];
		size_t k = n < 8 ? n : 8, i;

		for (i = 0; i < 8; i++)
			le[i] = (uint8_t)(w >> (8 * i));
		memcpy(dst, le, k);
		dst += k;
		n -= k;
	}
}

static uint32_t crc32_table[256];

static void crc32_init(void)
{
	uint32_t i, j, c;

	for (i = 0; i < 256; i++) {
		c = i;
		for (j = 0; j < 8; j++)
			c = c & 1 ? 0xedb88320u ^ (c >> 1) : c >> 1;
		crc32_table[i] = c;
	}
}

static uint32_t crc32_update(uint32_t crc, const uint8_t *p, size_t n)
{
	crc = ~crc;
	while (n--)
		crc = crc32_table[(crc ^ *p++) & 0xff] ^ (crc >> 8);
	return ~crc;
}

/* Operations. Each returns 0 or an errno; payload structs were size-checked by dispatch. */

#define REQ(type, rq) ((const struct type *)(rq)->p)
#define TAIL(rq, type) ((rq)->p + sizeof(struct type))
#define TAIL_LEN(rq, type) ((rq)->len - sizeof(struct type))

static int count_devices(void)
{
	char path[32];
	int n = 0;

	for (;;) {
		snprintf(path, sizeof(path), "/dev/ncdma%d", n);
		if (access(path, F_OK))
			return n;
		n++;
	}
}

static int op_HELLO(const struct req *rq, struct out *o)
{
	struct agent_hello_reply *r = out_grow(o, sizeof(*r));
	struct utsname u;

	(void)rq;
	if (!r)
		return ENOMEM;
	r->proto_version = AGENT_VERSION;
	r->uapi_version = NCDMA_UAPI_VERSION;
	r->page_size = (uint32_t)page_size;
	r->devices = (uint32_t)count_devices();
	if (uname(&u) == 0)
		return out_put(o, u.release, strlen(u.release));
	return 0;
}

static int op_ECHO(const struct req *rq, struct out *o)
{
	return out_put(o, rq->p, rq->len);
}

/* A NUL-terminated copy of a path from a tail. */
static int tail_path(const uint8_t *p, size_t n, char *path, size_t size, struct out *o)
{
	if (n == 0 || n >= size || memchr(p, 0, n))
		return fail(o, EINVAL, "bad path");
	memcpy(path, p, n);
	path[n] = 0;
	return 0;
}

static int op_READ_FILE(const struct req *rq, struct out *o)
{
	const struct agent_read_file_request *q = REQ(agent_read_file_request, rq);
	uint32_t max = q->max_len ? q->max_len : 65536;
	char path[4096];
	int fd, err;

	err = tail_path(TAIL(rq, agent_read_file_request), TAIL_LEN(rq, agent_read_file_request),
			path, sizeof(path), o);
	if (err)
		return err;
	if (max > READ_BYTES_MAX)
		max = READ_BYTES_MAX;
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return fail(o, errno, "open %s: %s", path, strerror(errno));
	while (o->len < max) {
		uint8_t chunk[4096];
		size_t want = max - o->len < sizeof(chunk) ? max - o->len : sizeof(chunk);
		ssize_t k = read(fd, chunk, want);

		if (k < 0 && errno == EINTR)
			continue;
		if (k < 0) {
			err = errno;
			close(fd);
			return fail(o, err, "read %s: %s", path, strerror(err));
		}
		if (k == 0 || out_put(o, chunk, (size_t)k))
			break;
	}
	close(fd);
	return 0;
}

static int op_WRITE_FILE(const struct req *rq, struct out *o)
{
	const struct agent_write_file_request *q = REQ(agent_write_file_request, rq);
	const uint8_t *tail = TAIL(rq, agent_write_file_request);
	size_t n = TAIL_LEN(rq, agent_write_file_request);
	char path[4096];
	int fd, err;

	if (q->path_len > n)
		return fail(o, EPROTO, "path_len past the payload");
	err = tail_path(tail, q->path_len, path, sizeof(path), o);
	if (err)
		return err;
	fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return fail(o, errno, "open %s: %s", path, strerror(errno));
	if (write_full(fd, tail + q->path_len, n - q->path_len)) {
		err = errno;
		close(fd);
		return fail(o, err, "write %s: %s", path, strerror(err));
	}
	if (close(fd))
		return fail(o, errno, "close %s: %s", path, strerror(errno));
	return 0;
}

/*
 * Walk /dev/kmsg from the oldest record; call fn for each with its sequence number.
 * Returns the newest sequence number seen.
 */
static int kmsg_walk(uint64_t *last, void (*fn)(void *, uint64_t, const char *, size_t),
		     void *ctx, struct out *o)
{
	char rec[8192];
	int fd = open("/dev/kmsg", O_RDONLY | O_NONBLOCK | O_CLOEXEC);

	if (fd < 0)
		return fail(o, errno, "open /dev/kmsg: %s", strerror(errno));
	*last = 0;
	for (;;) {
		ssize_t k = read(fd, rec, sizeof(rec) - 1);
		unsigned long long seq;

		if (k < 0) {
			if (errno == EPIPE)
				continue;	/* overwritten while reading: skip ahead */
			break;		/* EAGAIN: no more records */
		}
		if (k == 0)
			break;
		rec[k] = 0;
		if (sscanf(rec, "%*u,%llu,", &seq) != 1)
			continue;
		*last = seq;
		if (fn)
			fn(ctx, seq, rec, (size_t)k);
	}
	close(fd);
	return 0;
}

static int op_KMSG_MARK(const struct req *rq, struct out *o)
{
	struct agent_kmsg_mark_reply *r = out_grow(o, sizeof(*r));
	uint64_t last;
	int err;

	(void)rq;
	if (!r)
		return ENOMEM;
	err = kmsg_walk(&last, NULL, NULL, o);
	((struct agent_kmsg_mark_reply *)o->data)->seq = last;
	return err;
}

struct kmsg_ctx {
	struct out *o;
	uint64_t since;
	uint32_t max;
	uint32_t records;
	uint32_t truncated;
};

static void kmsg_collect(void *arg, uint64_t seq, const char *rec, size_t n)
{
	struct kmsg_ctx *k = arg;

	if (seq <= k->since)
		return;
	if (k->o->len - sizeof(struct agent_kmsg_read_reply) + n > k->max) {
		k->truncated = 1;
		return;
	}
	if (out_put(k->o, rec, n) == 0)
		k->records++;
}

static int op_KMSG_READ(const struct req *rq, struct out *o)
{
	const struct agent_kmsg_read_request *q = REQ(agent_kmsg_read_request, rq);
	struct kmsg_ctx k = { .o = o, .since = q->since, .max = q->max_len ? q->max_len : 1 << 20 };
	struct agent_kmsg_read_reply *r;
	uint64_t last;
	int err;

	if (k.max > READ_BYTES_MAX)
		k.max = READ_BYTES_MAX;
	if (!out_grow(o, sizeof(*r)))
		return ENOMEM;
	err = kmsg_walk(&last, kmsg_collect, &k, o);
	r = (struct agent_kmsg_read_reply *)o->data;
	r->last_seq = last;
	r->records = k.records;
	r->truncated = k.truncated;
	return err;
}

static int op_MODULE_UNLOAD(const struct req *rq, struct out *o)
{
	char name[256];
	int err = tail_path(rq->p, rq->len, name, sizeof(name), o);

	if (err)
		return err;
	if (syscall(SYS_delete_module, name, O_NONBLOCK))
		return fail(o, errno, "delete_module %s: %s", name, strerror(errno));
	return 0;
}

static int op_MODULE_LOAD(const struct req *rq, struct out *o)
{
	const char *params = "";
	char buf[4096];
	const uint8_t *nul;
	int fd, err;

	if (rq->len == 0 || rq->len >= sizeof(buf))
		return fail(o, EINVAL, "bad module path");
	memcpy(buf, rq->p, rq->len);
	buf[rq->len] = 0;
	nul = memchr(rq->p, 0, rq->len);
	if (nul)
		params = buf + (nul - rq->p) + 1;
	fd = open(buf, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return fail(o, errno, "open %s: %s", buf, strerror(errno));
	err = syscall(SYS_finit_module, fd, params, 0) ? errno : 0;
	close(fd);
	if (err)
		return fail(o, err, "finit_module %s: %s", buf, strerror(err));
	return 0;
}

/* Forget attachment a (state_lock held): the driver unmaps and detaches. */
static void att_free_locked(struct att *a)
{
	if (dev_fd[a->dev] >= 0)
		ioctl(dev_fd[a->dev], NCDMA_IOC_CLOSE, &a->handle);
	memset(a, 0, sizeof(*a));
}

/* Forget buffer b and its attachments (state_lock held). */
static int buf_free_locked(struct buf *b, uint32_t id, struct out *o)
{
	int i;

	if (b->busy)
		return fail(o, EBUSY, "buffer %u is in use by a running request", id);
	for (i = 0; i < MAX_ATTS; i++)
		if (atts[i].used && atts[i].buf == id && atts[i].busy)
			return fail(o, EBUSY, "attachment %d of buffer %u is in use", i + 1, id);
	for (i = 0; i < MAX_ATTS; i++)
		if (atts[i].used && atts[i].buf == id)
			att_free_locked(&atts[i]);
	for (i = 0; i < MAX_DEVS; i++)
		if (b->handle[i] && dev_fd[i] >= 0)
			ioctl(dev_fd[i], NCDMA_IOC_CLOSE, &b->handle[i]);
	if (b->map)
		munmap(b->map, b->size);
	if (b->memfd >= 0)
		close(b->memfd);
	close(b->fd);
	memset(b, 0, sizeof(*b));
	return 0;
}

static int op_CLOSE_ALL(const struct req *rq, struct out *o)
{
	struct agent_close_all_reply *r = out_grow(o, sizeof(*r));
	uint32_t nb = 0, na = 0;
	int i, err = 0;

	(void)rq;
	if (!r)
		return ENOMEM;
	pthread_mutex_lock(&state_lock);
	for (i = 0; i < MAX_ATTS; i++)
		na += atts[i].used;
	for (i = 0; i < MAX_BUFS && !err; i++) {
		if (bufs[i].used) {
			err = buf_free_locked(&bufs[i], i + 1, o);
			nb += !err;
		}
	}
	for (i = 0; i < MAX_DEVS && !err; i++) {
		if (dev_fd[i] >= 0) {
			close(dev_fd[i]);
			dev_fd[i] = -1;
		}
	}
	pthread_mutex_unlock(&state_lock);
	r = (struct agent_close_all_reply *)o->data;
	r->buffers = nb;
	r->attachments = na;
	return err;
}

static int op_DEVICE_INFO(const struct req *rq, struct out *o)
{
	const struct agent_dev_request *q = REQ(agent_dev_request, rq);
	struct agent_device_info_reply *r;
	struct ncdma_info info;
	int fd, err;

	err = dev_get(q->dev, &fd, o);
	if (err)
		return err;
	err = xioctl(fd, NCDMA_IOC_INFO, &info, "NCDMA_IOC_INFO", o);
	if (err)
		return err;
	r = out_grow(o, sizeof(*r));
	if (!r)
		return ENOMEM;
	_Static_assert(sizeof(*r) == sizeof(info), "info layout");
	memcpy(r, &info, sizeof(*r));
	return 0;
}

static int op_STATS(const struct req *rq, struct out *o)
{
	const struct agent_stats_request *q = REQ(agent_stats_request, rq);
	struct agent_stats_reply *r;
	struct ncdma_stats st = { .flags = q->flags };
	int fd, err;

	err = dev_get(q->dev, &fd, o);
	if (err)
		return err;
	err = xioctl(fd, NCDMA_IOC_STATS, &st, "NCDMA_IOC_STATS", o);
	if (err)
		return err;
	r = out_grow(o, sizeof(*r));
	if (!r)
		return ENOMEM;
	_Static_assert(sizeof(*r) == sizeof(st), "stats layout");
	memcpy(r, &st, sizeof(*r));
	return 0;
}

/* Buffers */

static int alloc_udmabuf(uint64_t size, int *out_fd, int *out_memfd, struct out *o)
{
	struct udmabuf_create create = { .flags = UDMABUF_FLAGS_CLOEXEC, .size = size };
	int memfd, ufd, fd, err = 0;

	memfd = memfd_create("dmalab-udmabuf", MFD_ALLOW_SEALING | MFD_CLOEXEC);
	if (memfd < 0)
		return fail(o, errno, "memfd_create: %s", strerror(errno));
	if (ftruncate(memfd, (off_t)size) || fcntl(memfd, F_ADD_SEALS, F_SEAL_SHRINK)) {
		err = fail(o, errno, "memfd: %s", strerror(errno));
		goto out;
	}
	ufd = open("/dev/udmabuf", O_RDWR | O_CLOEXEC);
	if (ufd < 0) {
		err = fail(o, errno, "open /dev/udmabuf: %s", strerror(errno));
		goto out;
	}
	create.memfd = (uint32_t)memfd;
	fd = ioctl(ufd, UDMABUF_CREATE, &create);
	if (fd < 0)
		err = fail(o, errno, "UDMABUF_CREATE: %s", strerror(errno));
	else
		*out_fd = fd;
	close(ufd);
out:
	if (err)
		close(memfd);
	else
		*out_memfd = memfd;
	return err;
}

static int alloc_heap(uint64_t size, int *out_fd, struct out *o)
{
	struct dma_heap_allocation_data data = {
		.len = size,
		.fd_flags = O_RDWR | O_CLOEXEC,
	};
	int hfd = open("/dev/dma_heap/system", O_RDWR | O_CLOEXEC), err = 0;

	if (hfd < 0)
		return fail(o, errno, "open /dev/dma_heap/system: %s", strerror(errno));
	if (ioctl(hfd, DMA_HEAP_IOCTL_ALLOC, &data) < 0)
		err = fail(o, errno, "DMA_HEAP_IOCTL_ALLOC: %s", strerror(errno));
	else
		*out_fd = (int)data.fd;
	close(hfd);
	return err;
}

/*
 * vgem: a dumb buffer of its DRM card, exported as a dma-buf, as IGT's vgem helpers do. The
 * ioctls are DRM's stable UAPI (drm.h, drm_mode.h), spelled out here because not every libc's
 * kernel headers carry drm/.
 */
struct vgem_create_dumb {
	uint32_t height, width, bpp, flags, handle, pitch;
	uint64_t size;
};
struct vgem_prime_handle {
	uint32_t handle, flags;
	int32_t fd;
};
struct vgem_gem_close {
	uint32_t handle, pad;
};
#define VGEM_IOCTL_CREATE_DUMB _IOWR('d', 0xb2, struct vgem_create_dumb)
#define VGEM_IOCTL_PRIME_HANDLE_TO_FD _IOWR('d', 0x2d, struct vgem_prime_handle)
#define VGEM_IOCTL_GEM_CLOSE _IOW('d', 0x09, struct vgem_gem_close)

/* The DRM card whose device is the vgem platform device. */
static int vgem_open(int *out_fd, struct out *o)
{
	char path[64], link[256];
	ssize_t n;
	int i;

	for (i = 0; i < 64; i++) {
		snprintf(path, sizeof(path), "/sys/class/drm/card%d/device", i);
		n = readlink(path, link, sizeof(link) - 1);
		if (n < 0)
			continue;
		link[n] = '\0';
		if (strcmp(strrchr(link, '/') ? strrchr(link, '/') + 1 : link, "vgem"))
			continue;
		snprintf(path, sizeof(path), "/dev/dri/card%d", i);
		*out_fd = open(path, O_RDWR | O_CLOEXEC);
		if (*out_fd < 0)
			return fail(o, errno, "open %s: %s", path, strerror(errno));
		return 0;
	}
	return fail(o, ENOENT, "no vgem DRM card (module vgem not loaded)");
}

static int alloc_vgem(uint64_t size, int *out_fd, struct out *o)
{
	struct vgem_create_dumb create = {
		.width = (uint32_t)page_size / 4, .height = (uint32_t)(size / page_size), .bpp = 32,
	};
	struct vgem_prime_handle prime = { .flags = O_RDWR | O_CLOEXEC };
	struct vgem_gem_close gc = { 0 };
	int card, err;

	err = vgem_open(&card, o);
	if (err)
		return err;
	err = xioctl(card, VGEM_IOCTL_CREATE_DUMB, &create, "DRM_IOCTL_MODE_CREATE_DUMB", o);
	if (!err) {
		prime.handle = gc.handle = create.handle;
		err = xioctl(card, VGEM_IOCTL_PRIME_HANDLE_TO_FD, &prime,
			     "DRM_IOCTL_PRIME_HANDLE_TO_FD", o);
		if (!err)
			*out_fd = prime.fd;
		/* the dma-buf holds the object from here on */
		ioctl(card, VGEM_IOCTL_GEM_CLOSE, &gc);
	}
	close(card);
	return err;
}

static int op_BUF_CREATE(const struct req *rq, struct out *o)
{
	const struct agent_buf_create_request *q = REQ(agent_buf_create_request, rq);
	struct agent_buf_create_reply *r;
	uint64_t size = (q->size + (uint64_t)page_size - 1) & ~((uint64_t)page_size - 1);
	uint32_t handle = 0;
	int fd = -1, memfd = -1, dev = -1, err, i;
	struct buf *b = NULL;
	void *map;

	if (!q->size || q->size > (1ull << 30))
		return fail(o, EINVAL, "size %llu", (unsigned long long)q->size);
	switch (q->kind) {
	case AGENT_BUF_NCDMA: {
		struct ncdma_buf_create create = {
			.size = size, .flags = q->flags, .faults = q->faults,
		};
		int dfd;

		err = dev_get(q->dev, &dfd, o);
		if (err)
			return err;
		err = xioctl(dfd, NCDMA_IOC_BUF_CREATE, &create, "NCDMA_IOC_BUF_CREATE", o);
		if (err)
			return err;
		fd = create.fd;
		handle = create.handle;
		dev = (int)q->dev;
		break;
	}
	case AGENT_BUF_UDMABUF:
		err = alloc_udmabuf(size, &fd, &memfd, o);
		break;
	case AGENT_BUF_HEAP_SYSTEM:
		err = alloc_heap(size, &fd, o);
		break;
	case AGENT_BUF_VGEM:
		err = alloc_vgem(size, &fd, o);
		break;
	default:
		return fail(o, EINVAL, "unknown buffer kind %u", q->kind);
	}
	if (fd < 0)
		return err;
	/* A udmabuf's user writes through its memfd, as udmabuf's users do; the pages are the same. */
	map = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, memfd >= 0 ? memfd : fd, 0);
	if (map == MAP_FAILED) {
		err = fail(o, errno, "mmap: %s", strerror(errno));
		goto fail_fd;
	}
	pthread_mutex_lock(&state_lock);
	for (i = 0; i < MAX_BUFS && !b; i++)
		if (!bufs[i].used)
			b = &bufs[i];
	if (b) {
		memset(b, 0, sizeof(*b));
		b->used = 1;
		b->kind = q->kind;
		b->fd = fd;
		b->size = size;
		b->map = map;
		b->memfd = memfd;
		b->dev = dev;
		if (dev >= 0)
			b->handle[dev] = handle;
	}
	pthread_mutex_unlock(&state_lock);
	if (!b) {
		munmap(map, size);
		err = fail(o, ENOSPC, "too many buffers");
		goto fail_fd;
	}
	r = out_grow(o, sizeof(*r));
	if (!r)
		return ENOMEM;
	r->buf = (uint32_t)(b - bufs) + 1;
	r->handle = handle;
	r->size = size;
	return 0;

fail_fd:
	if (handle)
		ioctl(dev_fd[dev], NCDMA_IOC_CLOSE, &handle);
	if (memfd >= 0)
		close(memfd);
	close(fd);
	return err;
}

static int op_BUF_FREE(const struct req *rq, struct out *o)
{
	const struct agent_buf_request *q = REQ(agent_buf_request, rq);
	struct buf *b;
	int err;

	pthread_mutex_lock(&state_lock);
	b = buf_lookup(q->buf);
	err = b ? buf_free_locked(b, q->buf, o) : fail(o, ENOENT, "no buffer %u", q->buf);
	pthread_mutex_unlock(&state_lock);
	return err;
}

/* A buffer and one device where it has a handle (for exporter operations). */
static int buf_hold_dev(uint32_t id, uint32_t dev, struct buf *b, int *fd, uint32_t *handle,
			struct out *o)
{
	int err = buf_hold(id, b, o), d;

	if (err)
		return err;
	d = dev == AGENT_ANY_DEVICE ? buf_any_device(b) : (int)dev;
	if (d < 0 || d >= MAX_DEVS || !b->handle[d]) {
		buf_release(id);
		return fail(o, ENXIO, "buffer %u has no handle on that device", id);
	}
	pthread_mutex_lock(&state_lock);
	*fd = dev_fd[d];
	pthread_mutex_unlock(&state_lock);
	*handle = b->handle[d];
	return 0;
}

static int op_BUF_INFO(const struct req *rq, struct out *o)
{
	const struct agent_buf_info_request *q = REQ(agent_buf_info_request, rq);
	struct agent_buf_info_reply *r;
	struct ncdma_buf_info info = {};
	struct buf b;
	uint32_t handle;
	int fd, err;

	err = buf_hold(q->buf, &b, o);
	if (err)
		return err;
	buf_release(q->buf);
	info.size = b.size;
	if (q->dev != AGENT_ANY_DEVICE || buf_any_device(&b) >= 0) {
		err = buf_hold_dev(q->buf, q->dev, &b, &fd, &handle, o);
		if (err)
			return err;
		info.handle = handle;
		err = xioctl(fd, NCDMA_IOC_BUF_INFO, &info, "NCDMA_IOC_BUF_INFO", o);
		buf_release(q->buf);
		if (err)
			return err;
	}
	r = out_grow(o, sizeof(*r));
	if (!r)
		return ENOMEM;
	r->kind = b.kind;
	r->state = info.state;
	r->size = info.size;
	r->flags = info.flags;
	r->faults = info.faults;
	r->attachments = info.attachments;
	r->mappings = info.mappings;
	r->pins = info.pins;
	r->cpu_owners = info.cpu_owners;
	r->moves = info.moves;
	r->generation = info.generation;
	return 0;
}

static int buf_exporter_ioctl(uint32_t id, unsigned long cmd, void *arg, const char *what,
			      struct out *o)
{
	struct buf b;
	uint32_t handle;
	int fd, err;

	err = buf_hold_dev(id, AGENT_ANY_DEVICE, &b, &fd, &handle, o);
	if (err)
		return err;
	if (b.kind != AGENT_BUF_NCDMA) {
		buf_release(id);
		return fail(o, EOPNOTSUPP, "%s needs an ncdma export", what);
	}
	if (arg)
		*(uint32_t *)arg = handle;
	else
		arg = &handle;
	err = xioctl(fd, cmd, arg, what, o);
	buf_release(id);
	return err;
}

static int op_BUF_MOVE(const struct req *rq, struct out *o)
{
	return buf_exporter_ioctl(REQ(agent_buf_request, rq)->buf, NCDMA_IOC_BUF_MOVE, NULL,
				  "NCDMA_IOC_BUF_MOVE", o);
}

static int op_BUF_REVOKE(const struct req *rq, struct out *o)
{
	return buf_exporter_ioctl(REQ(agent_buf_request, rq)->buf, NCDMA_IOC_BUF_REVOKE, NULL,
				  "NCDMA_IOC_BUF_REVOKE", o);
}

static int op_BUF_SET_FAULTS(const struct req *rq, struct out *o)
{
	const struct agent_buf_faults_request *q = REQ(agent_buf_faults_request, rq);
	struct ncdma_set_faults sf = { .faults = q->faults };

	return buf_exporter_ioctl(q->buf, NCDMA_IOC_SET_FAULTS, &sf, "NCDMA_IOC_SET_FAULTS", o);
}

/* Run fn(ctx) with the CPU guard: a SIGBUS or SIGSEGV in it fails the request with EFAULT. */
static int guarded(struct out *o, void (*fn)(void *), void *ctx)
{
	sigjmp_buf jb;
	int sig = sigsetjmp(jb, 1);

	if (sig) {
		cpu_guard = NULL;
		return fail(o, EFAULT, "signal %d touching the buffer", sig);
	}
	cpu_guard = &jb;
	fn(ctx);
	cpu_guard = NULL;
	return 0;
}

struct cpu_op {
	uint8_t *map;		/* the buffer's mapping at the request's offset */
	const uint8_t *data;
	uint8_t *dst;
	uint64_t len;
	uint64_t seed;
	uint32_t mode;
	uint32_t crc;
	uint64_t bad, first;
	uint32_t expected, actual;
};

static void touch_pages(void *arg)
{
	struct cpu_op *c = arg;
	uint64_t i;

	for (i = 0; i < c->len; i++)
		(void)*(volatile uint8_t *)(c->map + i * (uint64_t)page_size);
}

static void cpu_write(void *arg)
{
	struct cpu_op *c = arg;
	uint64_t state = pattern_state(c->seed), at = 0;
	uint8_t chunk[65536];

	if (c->mode == AGENT_WRITE_DATA) {
		memcpy(c->map, c->data, c->len);
	} else if (c->mode == AGENT_WRITE_BYTE) {
		memset(c->map, (int)(c->seed & 0xff), c->len);
	} else {
		while (at < c->len) {
			size_t n = c->len - at < sizeof(chunk) ? c->len - at : sizeof(chunk);

			pattern_fill(chunk, n, &state);
			memcpy(c->map + at, chunk, n);
			at += n;
		}
	}
}

static void cpu_read(void *arg)
{
	struct cpu_op *c = arg;

	if (c->dst) {
		memcpy(c->dst, c->map, c->len);
		c->crc = crc32_update(0, c->dst, c->len);
	} else {
		c->crc = crc32_update(0, c->map, c->len);
	}
}

static void cpu_verify(void *arg)
{
	struct cpu_op *c = arg;
	uint64_t state = pattern_state(c->seed), at = 0;
	uint8_t chunk[65536];

	c->bad = 0;
	c->first = UINT64_MAX;
	while (at < c->len) {
		size_t n = c->len - at < sizeof(chunk) ? c->len - at : sizeof(chunk), i;

		pattern_fill(chunk, n, &state);
		if (memcmp(chunk, c->map + at, n)) {
			for (i = 0; i < n; i++) {
				if (chunk[i] == c->map[at + i])
					continue;
				if (!c->bad++) {
					c->first = at + i;
					c->expected = chunk[i];
					c->actual = c->map[at + i];
				}
			}
		}
		at += n;
	}
}

/* Physical addresses of pages of a (shared, not PFN-mapped) mapping, from /proc/self/pagemap. */
static int pagemap_pas(uint8_t *map, uint32_t count, struct out *o)
{
	uint64_t *entries = calloc(count ? count : 1, sizeof(*entries));
	struct cpu_op c = { .map = map, .len = count };
	uint32_t i;
	int fd, err;

	if (!entries)
		return ENOMEM;
	err = guarded(o, touch_pages, &c);
	fd = err ? -1 : open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	if (!err && fd < 0)
		err = fail(o, errno, "open /proc/self/pagemap: %s", strerror(errno));
	if (!err && pread(fd, entries, count * sizeof(*entries),
			  (off_t)((uintptr_t)map / (uint64_t)page_size * 8)) !=
		    (ssize_t)(count * sizeof(*entries)))
		err = fail(o, EIO, "short read of /proc/self/pagemap");
	for (i = 0; !err && i < count; i++) {
		uint64_t e = entries[i];
		uint64_t pa = (e >> 63) & 1 ? (e & ((1ull << 55) - 1)) * (uint64_t)page_size : 0;

		err = out_put(o, &pa, sizeof(pa));
	}
	if (fd >= 0)
		close(fd);
	free(entries);
	return err;
}

/* The buffer's handle on device dev, importing its dma-buf there first. state_lock held. */
static int buf_import(struct buf *b, int dev, struct out *o)
{
	struct ncdma_buf_import imp = { .fd = b->fd };
	int err;

	if (b->handle[dev])
		return 0;
	err = xioctl(dev_fd[dev], NCDMA_IOC_BUF_IMPORT, &imp, "NCDMA_IOC_BUF_IMPORT", o);
	if (!err)
		b->handle[dev] = imp.handle;
	return err;
}

static int op_BUF_PAGES(const struct req *rq, struct out *o)
{
	const struct agent_buf_pages_request *q = REQ(agent_buf_pages_request, rq);
	uint64_t npages;
	struct buf b;
	int err;

	err = buf_hold(q->buf, &b, o);
	if (err)
		return err;
	npages = b.size / (uint64_t)page_size;
	if (q->count > MAX_PAGES_QUERY || q->first > npages || q->count > npages - q->first) {
		err = fail(o, ERANGE, "pages %llu+%u of %llu", (unsigned long long)q->first,
			   q->count, (unsigned long long)npages);
		goto out;
	}
	if (!out_grow(o, sizeof(struct agent_count_reply))) {
		err = ENOMEM;
		goto out;
	}
	((struct agent_count_reply *)o->data)->count = q->count;
	if (!q->count)
		goto out;
	if (b.kind != AGENT_BUF_UDMABUF) {
		/*
		 * The driver knows: an ncdma export its pages, a heap buffer through the exporter's
		 * kernel mapping (the CPU mappings are PFN-mapped: pagemap skips them).
		 */
		uint64_t *pas = out_grow(o, (size_t)q->count * sizeof(uint64_t));
		struct ncdma_buf_pages req = {
			.count = q->count, .first = q->first, .pas_ptr = (uintptr_t)pas,
		};
		int dev = b.kind == AGENT_BUF_NCDMA ? b.dev : 0, fd = -1;
		struct buf *live;

		if (!pas) {
			err = ENOMEM;
			goto out;
		}
		pthread_mutex_lock(&state_lock);
		err = dev_open(dev, o);
		live = err ? NULL : buf_lookup(q->buf);
		if (live)
			err = buf_import(live, dev, o);
		if (live && !err) {
			req.handle = live->handle[dev];
			fd = dev_fd[dev];
		}
		pthread_mutex_unlock(&state_lock);
		if (!err)
			err = xioctl(fd, NCDMA_IOC_BUF_PAGES, &req, "NCDMA_IOC_BUF_PAGES", o);
	} else {
		/* udmabuf's pages are its memfd's: map that (shared memory pagemap reports). */
		uint8_t *map = mmap(NULL, (size_t)q->count * page_size, PROT_READ, MAP_SHARED,
				    b.memfd, (off_t)(q->first * (uint64_t)page_size));

		if (map == MAP_FAILED) {
			err = fail(o, errno, "mmap memfd: %s", strerror(errno));
			goto out;
		}
		err = pagemap_pas(map, q->count, o);
		munmap(map, (size_t)q->count * page_size);
	}
out:
	buf_release(q->buf);
	return err;
}

/* CPU access */

static int op_CPU_WRITE(const struct req *rq, struct out *o)
{
	const struct agent_cpu_write_request *q = REQ(agent_cpu_write_request, rq);
	const uint8_t *data = TAIL(rq, agent_cpu_write_request);
	uint64_t len = q->mode == AGENT_WRITE_DATA ? TAIL_LEN(rq, agent_cpu_write_request) : q->len;
	struct buf b;
	int err;

	if (q->mode > AGENT_WRITE_BYTE)
		return fail(o, EINVAL, "unknown write mode %u", q->mode);
	if (q->mode != AGENT_WRITE_DATA && TAIL_LEN(rq, agent_cpu_write_request))
		return fail(o, EPROTO, "data with a non-DATA write");
	err = buf_hold(q->buf, &b, o);
	if (err)
		return err;
	err = check_range(b.size, q->offset, len, o);
	if (!err) {
		struct cpu_op c = {
			.map = b.map + q->offset, .data = data, .len = len, .seed = q->seed,
			.mode = q->mode,
		};

		err = guarded(o, cpu_write, &c);
	}
	buf_release(q->buf);
	return err;
}

static int op_CPU_READ(const struct req *rq, struct out *o)
{
	const struct agent_cpu_read_request *q = REQ(agent_cpu_read_request, rq);
	struct agent_cpu_read_reply *r;
	struct buf b;
	int err;

	if (q->mode > AGENT_READ_CRC32)
		return fail(o, EINVAL, "unknown read mode %u", q->mode);
	if (q->mode == AGENT_READ_BYTES && q->len > READ_BYTES_MAX)
		return fail(o, EMSGSIZE, "at most %u bytes per read", READ_BYTES_MAX);
	err = buf_hold(q->buf, &b, o);
	if (err)
		return err;
	err = check_range(b.size, q->offset, q->len, o);
	if (!err && !out_grow(o, sizeof(*r)))
		err = ENOMEM;
	if (!err && q->mode == AGENT_READ_BYTES && !out_grow(o, q->len))
		err = ENOMEM;
	if (!err) {
		struct cpu_op c = {
			.map = b.map + q->offset, .len = q->len,
			.dst = q->mode == AGENT_READ_BYTES ? o->data + sizeof(*r) : NULL,
		};

		err = guarded(o, cpu_read, &c);
		r = (struct agent_cpu_read_reply *)o->data;
		r->crc32 = c.crc;
		r->len = q->len;
	}
	buf_release(q->buf);
	return err;
}

static int op_CPU_VERIFY(const struct req *rq, struct out *o)
{
	const struct agent_cpu_verify_request *q = REQ(agent_cpu_verify_request, rq);
	struct agent_cpu_verify_reply *r = out_grow(o, sizeof(*r));
	struct buf b;
	int err;

	if (!r)
		return ENOMEM;
	err = buf_hold(q->buf, &b, o);
	if (err)
		return err;
	err = check_range(b.size, q->offset, q->len, o);
	if (!err) {
		struct cpu_op c = { .map = b.map + q->offset, .len = q->len, .seed = q->seed };

		err = guarded(o, cpu_verify, &c);
		r = (struct agent_cpu_verify_reply *)o->data;
		r->mismatches = c.bad;
		r->first = c.first;
		r->expected = c.expected;
		r->actual = c.actual;
	}
	buf_release(q->buf);
	return err;
}

static int op_SYNC(const struct req *rq, struct out *o)
{
	const struct agent_sync_request *q = REQ(agent_sync_request, rq);
	struct dma_buf_sync sync = { .flags = q->flags };
	struct buf b;
	int err;

	if (q->flags & ~(uint32_t)DMA_BUF_SYNC_VALID_FLAGS_MASK || !(q->flags & DMA_BUF_SYNC_RW))
		return fail(o, EINVAL, "sync flags %#x", q->flags);
	err = buf_hold(q->buf, &b, o);
	if (err)
		return err;
	err = xioctl(b.fd, DMA_BUF_IOCTL_SYNC, &sync, "DMA_BUF_IOCTL_SYNC", o);
	buf_release(q->buf);
	return err;
}

/* Attachments */

static int op_ATTACH(const struct req *rq, struct out *o)
{
	const struct agent_attach_request *q = REQ(agent_attach_request, rq);
	struct ncdma_attach req = { .flags = q->flags, .faults = q->faults };
	struct agent_attach_reply *r;
	struct att *a = NULL;
	struct buf *b;
	int err, fd = -1, i;

	pthread_mutex_lock(&state_lock);
	err = dev_open((int)q->dev, o);
	b = err ? NULL : buf_lookup(q->buf);
	if (!err && !b)
		err = fail(o, ENOENT, "no buffer %u", q->buf);
	if (!err)
		err = buf_import(b, (int)q->dev, o);
	for (i = 0; !err && i < MAX_ATTS && !a; i++)
		if (!atts[i].used)
			a = &atts[i];
	if (!err && !a)
		err = fail(o, ENOSPC, "too many attachments");
	if (!err) {
		fd = dev_fd[q->dev];
		req.buf = b->handle[q->dev];
		a->used = 1;	/* reserved; busy until the ioctl is done */
		a->busy = 1;
		a->buf = q->buf;
		a->dev = (int)q->dev;
		b->busy++;
	}
	pthread_mutex_unlock(&state_lock);
	if (err)
		return err;
	err = xioctl(fd, NCDMA_IOC_ATTACH, &req, "NCDMA_IOC_ATTACH", o);
	pthread_mutex_lock(&state_lock);
	b->busy--;
	if (err) {
		memset(a, 0, sizeof(*a));
	} else {
		a->handle = req.handle;
		a->busy = 0;
	}
	pthread_mutex_unlock(&state_lock);
	if (err)
		return err;
	r = out_grow(o, sizeof(*r));
	if (!r)
		return ENOMEM;
	r->att = (uint32_t)(a - atts) + 1;
	r->handle = req.handle;
	return 0;
}

static int op_DETACH(const struct req *rq, struct out *o)
{
	const struct agent_att_request *q = REQ(agent_att_request, rq);
	struct att *a;
	int err = 0;

	pthread_mutex_lock(&state_lock);
	a = att_lookup(q->att);
	if (!a)
		err = fail(o, ENOENT, "no attachment %u", q->att);
	else if (a->busy)
		err = fail(o, EBUSY, "attachment %u is in use by a running request", q->att);
	else
		att_free_locked(a);
	pthread_mutex_unlock(&state_lock);
	return err;
}

static int op_MAP(const struct req *rq, struct out *o)
{
	const struct agent_map_request *q = REQ(agent_map_request, rq);
	struct ncdma_map req = { .dir = q->dir, .timeout_ms = q->timeout_ms };
	struct agent_map_reply *r;
	struct att a;
	int fd, err;

	err = att_hold(q->att, &a, &fd, o);
	if (err)
		return err;
	req.handle = a.handle;
	err = xioctl(fd, NCDMA_IOC_MAP, &req, "NCDMA_IOC_MAP", o);
	att_release(q->att);
	if (err)
		return err;
	r = out_grow(o, sizeof(*r));
	if (!r)
		return ENOMEM;
	r->nsegs = req.nsegs;
	return 0;
}

static int op_UNMAP(const struct req *rq, struct out *o)
{
	const struct agent_att_request *q = REQ(agent_att_request, rq);
	struct ncdma_unmap req = {};
	struct att a;
	int fd, err;

	err = att_hold(q->att, &a, &fd, o);
	if (err)
		return err;
	req.handle = a.handle;
	err = xioctl(fd, NCDMA_IOC_UNMAP, &req, "NCDMA_IOC_UNMAP", o);
	att_release(q->att);
	return err;
}

static int op_ATT_INFO(const struct req *rq, struct out *o)
{
	const struct agent_att_info_request *q = REQ(agent_att_info_request, rq);
	uint32_t max = q->max_segs > 65536 ? 65536 : q->max_segs;
	struct ncdma_att_info info = { .max_segs = max };
	struct agent_att_info_reply *r;
	struct att a;
	int fd, err;

	if (!out_grow(o, sizeof(*r)) || !out_grow(o, (size_t)max * sizeof(struct agent_seg)))
		return ENOMEM;
	err = att_hold(q->att, &a, &fd, o);
	if (err)
		return err;
	info.handle = a.handle;
	info.segs_ptr = (uintptr_t)(o->data + sizeof(*r));
	err = xioctl(fd, NCDMA_IOC_ATT_INFO, &info, "NCDMA_IOC_ATT_INFO", o);
	att_release(q->att);
	if (err)
		return err;
	r = (struct agent_att_info_reply *)o->data;
	r->state = info.state;
	r->dir = info.dir;
	r->flags = info.flags;
	r->faults = info.faults;
	r->nsegs = info.nsegs;
	r->count = info.nsegs < max ? info.nsegs : max;
	r->size = info.size;
	r->maps = info.maps;
	r->generation = info.generation;
	o->len = sizeof(*r) + (size_t)r->count * sizeof(struct agent_seg);
	return 0;
}

static int op_ATT_SYNC(const struct req *rq, struct out *o)
{
	const struct agent_att_sync_request *q = REQ(agent_att_sync_request, rq);
	struct ncdma_att_sync req = { .flags = q->flags };
	struct att a;
	int fd, err;

	err = att_hold(q->att, &a, &fd, o);
	if (err)
		return err;
	req.handle = a.handle;
	err = xioctl(fd, NCDMA_IOC_ATT_SYNC, &req, "NCDMA_IOC_ATT_SYNC", o);
	att_release(q->att);
	return err;
}

static int op_ATT_SET_FAULTS(const struct req *rq, struct out *o)
{
	const struct agent_att_faults_request *q = REQ(agent_att_faults_request, rq);
	struct ncdma_set_faults req = { .faults = q->faults };
	struct att a;
	int fd, err;

	err = att_hold(q->att, &a, &fd, o);
	if (err)
		return err;
	req.handle = a.handle;
	err = xioctl(fd, NCDMA_IOC_SET_FAULTS, &req, "NCDMA_IOC_SET_FAULTS", o);
	att_release(q->att);
	return err;
}

/* Descriptors */

/* Translate descriptors naming agent attachments into the driver's, on device dev. */
static int translate_descs(uint32_t dev, const struct agent_desc *in, uint32_t count,
			   struct ncdma_udesc *out, struct out *o)
{
	uint32_t i;
	int err = 0;

	pthread_mutex_lock(&state_lock);
	for (i = 0; i < count && !err; i++) {
		uint32_t ids[2] = { in[i].src, in[i].dst };
		uint32_t handles[2] = { 0, 0 };
		int k;

		for (k = 0; k < 2 && !err; k++) {
			struct att *a;

			if (!ids[k])
				continue;
			a = att_lookup(ids[k]);
			if (!a)
				err = fail(o, ENOENT, "descriptor %u: no attachment %u", i, ids[k]);
			else if ((uint32_t)a->dev != dev)
				err = fail(o, EXDEV, "descriptor %u: attachment %u is on device %d",
					   i, ids[k], a->dev);
			else
				handles[k] = a->handle;
		}
		memcpy(&out[i], &in[i], sizeof(out[i]));
		out[i].src = handles[0];
		out[i].dst = handles[1];
	}
	pthread_mutex_unlock(&state_lock);
	return err;
}

static int submit(uint32_t dev, const struct agent_desc *descs, uint32_t count,
		  struct ncdma_submit *sub, int *fd, struct out *o)
{
	struct ncdma_udesc *u;
	int err;

	if (!count || count > NCDMA_MAX_BATCH)
		return fail(o, EINVAL, "%u descriptors (1..%u)", count, NCDMA_MAX_BATCH);
	err = dev_get(dev, fd, o);
	if (err)
		return err;
	u = calloc(count, sizeof(*u));
	if (!u)
		return ENOMEM;
	err = translate_descs(dev, descs, count, u, o);
	if (!err) {
		sub->descs_ptr = (uintptr_t)u;
		sub->count = count;
		err = xioctl(*fd, NCDMA_IOC_SUBMIT, sub, "NCDMA_IOC_SUBMIT", o);
	}
	free(u);
	return err;
}

/* Wait for a batch; the results go to the reply after its fixed part. */
static int wait_batch(int fd, uint64_t batch, uint32_t count, uint32_t timeout_ms,
		      struct out *o)
{
	struct ncdma_wait w = { .batch = batch, .count = count, .timeout_ms = timeout_ms };
	size_t fixed = o->len;

	if (count && !out_grow(o, (size_t)count * sizeof(struct ncdma_result)))
		return ENOMEM;
	w.results_ptr = (uintptr_t)(o->data + fixed);
	return xioctl(fd, NCDMA_IOC_WAIT, &w, "NCDMA_IOC_WAIT", o);
}

static int op_SUBMIT(const struct req *rq, struct out *o)
{
	const struct agent_submit_request *q = REQ(agent_submit_request, rq);
	struct ncdma_submit sub = {};
	struct agent_submit_reply *r;
	int fd, err;

	err = submit(q->dev, (const struct agent_desc *)TAIL(rq, agent_submit_request), q->count,
		     &sub, &fd, o);
	if (err)
		return err;
	r = out_grow(o, sizeof(*r));
	if (!r)
		return ENOMEM;
	r->batch = sub.batch;
	r->pieces = sub.pieces;
	return 0;
}

static int op_WAIT(const struct req *rq, struct out *o)
{
	const struct agent_wait_request *q = REQ(agent_wait_request, rq);
	uint32_t count = q->count > NCDMA_MAX_BATCH ? NCDMA_MAX_BATCH : q->count;
	int fd, err;

	err = dev_get(q->dev, &fd, o);
	if (err)
		return err;
	if (!out_grow(o, sizeof(struct agent_count_reply)))
		return ENOMEM;
	((struct agent_count_reply *)o->data)->count = count;
	return wait_batch(fd, q->batch, count, q->timeout_ms, o);
}

static int op_RUN(const struct req *rq, struct out *o)
{
	const struct agent_run_request *q = REQ(agent_run_request, rq);
	struct ncdma_submit sub = {};
	struct agent_run_reply *r;
	int fd, err;

	err = submit(q->dev, (const struct agent_desc *)TAIL(rq, agent_run_request), q->count, &sub,
		     &fd, o);
	if (err)
		return err;
	if (!out_grow(o, sizeof(*r)))
		return ENOMEM;
	r = (struct agent_run_reply *)o->data;
	r->batch = sub.batch;
	r->pieces = sub.pieces;
	r->count = q->count;
	return wait_batch(fd, sub.batch, q->count, q->timeout_ms, o);
}

static int op_CACHE_OP(const struct req *rq, struct out *o)
{
	const struct agent_cache_op_request *q = REQ(agent_cache_op_request, rq);
	struct ncdma_cache_op req = {
		.op = q->op, .flags = q->flags, .offset = q->offset, .len = q->len,
	};
	struct agent_cache_op_reply *r;
	int fd, err;

	if (!(q->flags & (NCDMA_UDESC_WHOLE | NCDMA_UDESC_RAW))) {
		struct att a;

		err = att_hold(q->att, &a, &fd, o);
		if (err)
			return err;
		if ((uint32_t)a.dev != q->dev) {
			att_release(q->att);
			return fail(o, EXDEV, "attachment %u is on device %d", q->att, a.dev);
		}
		req.handle = a.handle;
		err = xioctl(fd, NCDMA_IOC_CACHE, &req, "NCDMA_IOC_CACHE", o);
		att_release(q->att);
	} else {
		err = dev_get(q->dev, &fd, o);
		if (!err)
			err = xioctl(fd, NCDMA_IOC_CACHE, &req, "NCDMA_IOC_CACHE", o);
	}
	if (err)
		return err;
	r = out_grow(o, sizeof(*r));
	if (!r)
		return ENOMEM;
	r->status = req.status;
	return 0;
}

/* Dispatch */

typedef int (*op_fn)(const struct req *, struct out *);

struct op_desc {
	const char *name;
	uint32_t req_size;
	int tail;
	uint32_t item_size;
	uint32_t count_off;
	op_fn fn;
};

#define OP_ENTRY(NAME, CODE, SIZE, TAIL_KIND, ITEM, COUNT_OFF) \
	[CODE] = { #NAME, SIZE, TAIL_KIND, ITEM, COUNT_OFF, op_##NAME },
static const struct op_desc op_table[256] = { AGENT_OP_LIST(OP_ENTRY) };
#undef OP_ENTRY

/* Does the payload fit the op's request? */
static int check_payload(const struct op_desc *d, const struct req *rq, char *why, size_t n)
{
	uint64_t count;

	if (rq->len < d->req_size) {
		snprintf(why, n, "%s: payload of %u bytes, the request needs %u", d->name, rq->len,
			 d->req_size);
		return EPROTO;
	}
	switch (d->tail) {
	case AGENT_TAIL_NONE:
		if (rq->len != d->req_size) {
			snprintf(why, n, "%s: payload of %u bytes, expected %u", d->name, rq->len,
				 d->req_size);
			return EPROTO;
		}
		break;
	case AGENT_TAIL_ITEMS:
		count = *(const uint32_t *)(rq->p + d->count_off);
		if ((uint64_t)rq->len != d->req_size + count * d->item_size) {
			snprintf(why, n, "%s: %llu items of %u bytes do not fill %u bytes", d->name,
				 (unsigned long long)count, d->item_size, rq->len - d->req_size);
			return EPROTO;
		}
		break;
	}
	return 0;
}

static void run_request(struct req *rq)
{
	const struct op_desc *d = &op_table[rq->h.op & 0xff];
	struct out o = {};
	int err;

	err = d->fn(rq, &o);
	if (err)
		send_error(&rq->h, err, o.err[0] ? o.err : strerror(err));
	else
		send_reply(&rq->h, 0, o.data, o.len);
	free(o.data);
	free(rq->p);
	free(rq);
}

static void *run_async(void *arg)
{
	run_request(arg);
	return NULL;
}

/* After a bad header: find the next MAGIC in the stream and complete a header from there. */
static void resync(struct agent_header *h)
{
	uint8_t win[AGENT_HEADER_SIZE];
	const uint8_t magic[4] = { AGENT_MAGIC & 0xff, (AGENT_MAGIC >> 8) & 0xff,
				   (AGENT_MAGIC >> 16) & 0xff, AGENT_MAGIC >> 24 };
	size_t have = sizeof(win), i;

	memcpy(win, h, sizeof(win));
	for (;;) {
		for (i = 1; i + 4 <= have; i++)
			if (!memcmp(win + i, magic, 4))
				break;
		if (i + 4 <= have) {
			memmove(win, win + i, have - i);
			have -= i;
			break;
		}
		/* Keep the last 3 bytes: MAGIC may straddle reads. */
		memmove(win, win + have - 3, 3);
		have = 3;
		read_full(port_fd, win + have, 1);
		have++;
		if (!memcmp(win, magic, 4))
			break;
	}
	read_full(port_fd, win + have, sizeof(win) - have);
	memcpy(h, win, sizeof(win));
}

static void serve(void)
{
	struct agent_header h;
	char why[160];

	read_full(port_fd, &h, sizeof(h));
	for (;;) {
		const struct op_desc *d;
		struct req *rq;
		int err;

		if (h.magic != AGENT_MAGIC) {
			send_error(&h, EBADMSG, "bad magic: looking for the next message");
			resync(&h);
			continue;
		}
		if (h.length > AGENT_MAX_PAYLOAD) {
			snprintf(why, sizeof(why), "payload of %u bytes, at most %u", h.length,
				 AGENT_MAX_PAYLOAD);
			send_error(&h, EMSGSIZE, why);
			resync(&h);
			continue;
		}
		rq = calloc(1, sizeof(*rq));
		if (rq)
			rq->p = malloc(h.length ? h.length : 1);
		if (!rq || !rq->p) {
			/* Drain the payload and refuse. */
			uint8_t sink[4096];
			uint32_t left = h.length;

			while (left) {
				uint32_t k = left < sizeof(sink) ? left : sizeof(sink);

				read_full(port_fd, sink, k);
				left -= k;
			}
			send_error(&h, ENOMEM, "out of memory");
			free(rq);
			read_full(port_fd, &h, sizeof(h));
			continue;
		}
		rq->h = h;
		rq->len = h.length;
		read_full(port_fd, rq->p, h.length);
		d = &op_table[h.op & 0xff];
		err = 0;
		if (h.version != AGENT_VERSION) {
			snprintf(why, sizeof(why), "protocol version %u, this agent speaks %u",
				 h.version, AGENT_VERSION);
			err = EPROTONOSUPPORT;
		} else if (h.op > 0xff || !d->fn) {
			snprintf(why, sizeof(why), "unknown op %#x", h.op);
			err = EOPNOTSUPP;
		} else {
			err = check_payload(d, rq, why, sizeof(why));
		}
		if (err) {
			send_error(&h, err, why);
			free(rq->p);
			free(rq);
		} else if (h.flags & AGENT_F_ASYNC) {
			pthread_t t;
			pthread_attr_t attr;

			pthread_attr_init(&attr);
			pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
			pthread_attr_setstacksize(&attr, 1 << 20);
			if (pthread_create(&t, &attr, run_async, rq))
				run_request(rq);
			pthread_attr_destroy(&attr);
		} else {
			run_request(rq);
		}
		read_full(port_fd, &h, sizeof(h));
	}
}

/* The /dev node of the virtio-serial port named AGENT_PORT_NAME. */
static int find_port(char *path, size_t n)
{
	DIR *dir = opendir("/sys/class/virtio-ports");
	struct dirent *e;
	int found = -1;

	if (!dir)
		return -1;
	while (found && (e = readdir(dir))) {
		char name_path[512], name[64] = "";
		FILE *f;

		if (e->d_name[0] == '.')
			continue;
		snprintf(name_path, sizeof(name_path), "/sys/class/virtio-ports/%s/name", e->d_name);
		f = fopen(name_path, "re");
		if (!f)
			continue;
		if (fgets(name, sizeof(name), f)) {
			name[strcspn(name, "\n")] = 0;
			if (!strcmp(name, AGENT_PORT_NAME)) {
				snprintf(path, n, "/dev/%s", e->d_name);
				found = 0;
			}
		}
		fclose(f);
	}
	closedir(dir);
	return found;
}

int main(int argc, char **argv)
{
	struct sigaction sa = { .sa_handler = on_fault, .sa_flags = SA_NODEFER };
	char path[300];
	int i;

	if (argc > 1 && !strcmp(argv[1], "-")) {
		port_fd = STDIN_FILENO;
		reply_fd = STDOUT_FILENO;
	} else {
		if (argc > 1) {
			snprintf(path, sizeof(path), "%s", argv[1]);
		} else if (find_port(path, sizeof(path))) {
			fprintf(stderr, "dmalab-agent: no virtio-serial port named %s\n",
				AGENT_PORT_NAME);
			return 1;
		}
		port_fd = open(path, O_RDWR | O_CLOEXEC);
		if (port_fd < 0) {
			fprintf(stderr, "dmalab-agent: open %s: %s\n", path, strerror(errno));
			return 1;
		}
		reply_fd = port_fd;
	}
	signal(SIGPIPE, SIG_IGN);
	sigemptyset(&sa.sa_mask);
	sigaction(SIGBUS, &sa, NULL);
	sigaction(SIGSEGV, &sa, NULL);
	page_size = sysconf(_SC_PAGESIZE);
	crc32_init();
	for (i = 0; i < MAX_DEVS; i++)
		dev_fd[i] = -1;
	serve();
	return 0;
}

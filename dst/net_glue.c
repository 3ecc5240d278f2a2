// SPDX-License-Identifier: GPL-2.0
/*
 * Socket and job glue for dst's remote legs.
 *
 * The helpers here wrap what Linux 6.12 only has as inline functions or
 * macros (socket callbacks under sk_callback_lock, bio segment walking,
 * memalloc scopes, delayed work), and keep C constants (MSG_*, SOL_*) out
 * of Rust.  Sends and receives on the data path never sleep (MSG_DONTWAIT);
 * only dst_sock_connect() and the blocking variants used for the handshake
 * do, bounded by the socket timeouts (or cut short by a shutdown).
 */

#include <linux/bio.h>
#include <linux/in.h>
#include <linux/in6.h>
#include <linux/net.h>
#include <linux/sched/mm.h>
#include <linux/slab.h>
#include <linux/tcp.h>
#include <linux/workqueue.h>
#include <net/inet_common.h>
#include <net/sock.h>
#include <net/tcp.h>

#include "glue.h"

#ifdef CONFIG_DEBUG_LOCK_ALLOC
/* dst's sockets carry block I/O: give them their own lockdep classes. */
static struct lock_class_key dst_sk_key[2];
static struct lock_class_key dst_slock_key[2];

static void dst_reclassify_socket(struct socket *sock)
{
	struct sock *sk = sock->sk;

	if (WARN_ON_ONCE(!sock_allow_reclassification(sk)))
		return;
	switch (sk->sk_family) {
	case AF_INET:
		sock_lock_init_class_and_name(sk, "slock-AF_INET-DST",
					      &dst_slock_key[0],
					      "sk_lock-AF_INET-DST",
					      &dst_sk_key[0]);
		break;
	case AF_INET6:
		sock_lock_init_class_and_name(sk, "slock-AF_INET6-DST",
					      &dst_slock_key[1],
					      "sk_lock-AF_INET6-DST",
					      &dst_sk_key[1]);
		break;
	}
}
#else
static void dst_reclassify_socket(struct socket *sock) { }
#endif

/*
 * Fills @ss from dst's address form (family 4 or 6, 16 address bytes, port,
 * scope); returns its length, or -EAFNOSUPPORT.
 */
static int dst_sockaddr(int family, const u8 *addr, u16 port, u32 scope_id,
			struct sockaddr_storage *ss)
{
	memset(ss, 0, sizeof(*ss));
	if (family == 4) {
		struct sockaddr_in *sin = (struct sockaddr_in *)ss;

		sin->sin_family = AF_INET;
		sin->sin_port = htons(port);
		memcpy(&sin->sin_addr, addr, 4);
		return sizeof(*sin);
	}
	if (family == 6) {
		struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;

		sin6->sin6_family = AF_INET6;
		sin6->sin6_port = htons(port);
		memcpy(&sin6->sin6_addr, addr, 16);
		sin6->sin6_scope_id = scope_id;
		return sizeof(*sin6);
	}
	return -EAFNOSUPPORT;
}

/*
 * No Nagle; blocking calls (connect, the handshakes) give up after
 * @timeout_ms; a peer that stops acknowledging data for that long, or an
 * idle connection whose peer is gone, is dropped in about that time.
 */
static void dst_sock_set_timeouts(struct sock *sk, unsigned int timeout_ms)
{
	tcp_sock_set_nodelay(sk);
	sk->sk_sndtimeo = msecs_to_jiffies(timeout_ms);
	sk->sk_rcvtimeo = msecs_to_jiffies(timeout_ms);
	sock_set_keepalive(sk);
	tcp_sock_set_keepidle(sk, max(1U, timeout_ms / 2000));
	tcp_sock_set_keepintvl(sk, max(1U, timeout_ms / 6000));
	tcp_sock_set_keepcnt(sk, 3);
	tcp_sock_set_user_timeout(sk, timeout_ms);
}

/*
 * A new kernel TCP socket in @sock, for the address made from @family,
 * @addr, @port and @scope_id, which is left in @ss.  Returns the address's
 * length, or a negative errno.
 */
static int dst_sock_new(int family, const u8 *addr, u16 port, u32 scope_id,
			struct sockaddr_storage *ss, struct socket **sock)
{
	int len = dst_sockaddr(family, addr, port, scope_id, ss);
	int err;

	if (len < 0)
		return len;
	err = sock_create_kern(&init_net, ss->ss_family, SOCK_STREAM,
			       IPPROTO_TCP, sock);
	return err ? err : len;
}

/*
 * A new client socket in @out, for the address made from @family, @addr,
 * @port and @scope_id, not connected yet: dst_sock_connect() connects it.
 * Its blocking calls give up after @timeout_ms.
 */
int dst_sock_client(int family, const u8 *addr, u16 port, u32 scope_id,
		    unsigned int timeout_ms, struct socket **out)
{
	struct sockaddr_storage ss;
	struct socket *sock;
	struct sock *sk;
	int len;

	len = dst_sock_new(family, addr, port, scope_id, &ss, &sock);
	if (len < 0)
		return len;
	dst_reclassify_socket(sock);
	sk = sock->sk;
	/* The socket carries writeback: no reclaim recursion, use reserves. */
	sk->sk_allocation = GFP_NOIO | __GFP_MEMALLOC;
	sk->sk_use_task_frag = false;
	sk_set_memalloc(sk);
	sock_no_linger(sk);
	dst_sock_set_timeouts(sk, timeout_ms);
	*out = sock;
	return 0;
}

/*
 * Connects @sock (from dst_sock_client()) to the same address, waiting at
 * most its timeout.  A shutdown from another thread ends the wait.
 */
int dst_sock_connect(struct socket *sock, int family, const u8 *addr,
		     u16 port, u32 scope_id)
{
	struct sockaddr_storage ss;
	int len, err;

	len = dst_sockaddr(family, addr, port, scope_id, &ss);
	if (len < 0)
		return len;
	/*
	 * What inet_stream_connect() does, but for the check: a shutdown
	 * before the SYN went out would not stop the connect, and one after
	 * it (under the same lock) ends the wait.
	 */
	lock_sock(sock->sk);
	if (sock->sk->sk_shutdown)
		err = -ECONNABORTED;
	else
		err = __inet_stream_connect(sock, (struct sockaddr *)&ss, len,
					    0, 0);
	release_sock(sock->sk);
	return err == -EINPROGRESS ? -ETIMEDOUT : err;
}

void dst_sock_release(struct socket *sock)
{
	kernel_sock_shutdown(sock, SHUT_RDWR);
	sock_release(sock);
}

int dst_sock_send(struct socket *sock, const void *buf, size_t len,
		  bool nonblock, bool more)
{
	struct msghdr msg = { .msg_flags = MSG_NOSIGNAL };
	struct kvec iov = { .iov_base = (void *)buf, .iov_len = len };
	unsigned int noreclaim;
	int ret;

	if (nonblock)
		msg.msg_flags |= MSG_DONTWAIT;
	if (more)
		msg.msg_flags |= MSG_MORE;
	noreclaim = memalloc_noreclaim_save();
	ret = kernel_sendmsg(sock, &msg, &iov, 1, len);
	memalloc_noreclaim_restore(noreclaim);
	return ret;
}

int dst_sock_recv(struct socket *sock, void *buf, size_t len, bool nonblock)
{
	struct msghdr msg = { .msg_flags = MSG_NOSIGNAL };
	struct kvec iov = { .iov_base = buf, .iov_len = len };
	unsigned int noreclaim;
	int ret;

	noreclaim = memalloc_noreclaim_save();
	ret = kernel_recvmsg(sock, &msg, &iov, 1, len,
			     nonblock ? MSG_DONTWAIT : MSG_WAITALL);
	memalloc_noreclaim_restore(noreclaim);
	return ret;
}

/* Segments moved by one sendmsg()/recvmsg() call at most. */
#define DST_SEGS 16

/*
 * Moves the segments @bv[0..@nr) (@len bytes) in one call, without
 * waiting.  A send gives the pages to the socket without a copy when the
 * kernel allows it (MSG_SPLICE_PAGES).
 */
static int dst_xfer_bvecs(struct socket *sock, struct bio_vec *bv,
			  unsigned int nr, size_t len, bool send, bool more)
{
	struct msghdr msg = { .msg_flags = MSG_DONTWAIT | MSG_NOSIGNAL };
	unsigned int i;

	if (!send) {
		iov_iter_bvec(&msg.msg_iter, ITER_DEST, bv, nr, len);
		return sock_recvmsg(sock, &msg, MSG_DONTWAIT);
	}
	msg.msg_flags |= MSG_SPLICE_PAGES;
	for (i = 0; i < nr; i++)
		if (!sendpages_ok(bv[i].bv_page, bv[i].bv_len, bv[i].bv_offset))
			msg.msg_flags &= ~MSG_SPLICE_PAGES;
	if (more)
		msg.msg_flags |= MSG_MORE;
	iov_iter_bvec(&msg.msg_iter, ITER_SOURCE, bv, nr, len);
	return sock_sendmsg(sock, &msg);
}

/*
 * Adds the result @ret of a transfer of @want bytes to @total; returns
 * whether to go on.  What the caller returns is @total: the bytes moved,
 * or if none, the first result: a negative errno, or 0, which for a
 * receive means end of stream and for a send becomes -EAGAIN.
 */
static bool dst_sock_account(int ret, size_t want, int *total, bool send)
{
	if (ret <= 0) {
		if (!*total)
			*total = ret ? ret : (send ? -EAGAIN : 0);
		return false;
	}
	*total += ret;
	return ret == want;
}

/*
 * Sends (@send) or receives the data of @bio from byte @skip on, up to
 * DST_SEGS segments per call, without waiting.  Returns the bytes moved
 * (possibly fewer than asked), 0 if a receive found the stream ended, or
 * a negative errno (-EAGAIN when nothing could be moved).  @more: more
 * data follows the bio's at once.
 */
static int dst_sock_xfer_bio(struct socket *sock, struct bio *bio, u32 skip,
			     bool send, bool more)
{
	struct bio_vec bv[DST_SEGS];
	struct bvec_iter iter = bio->bi_iter;
	unsigned int noreclaim;
	int total = 0;

	if (skip > iter.bi_size)
		return -EINVAL;
	bio_advance_iter(bio, &iter, skip);
	noreclaim = memalloc_noreclaim_save();
	while (iter.bi_size) {
		struct bvec_iter pos = iter;
		unsigned int nr = 0;
		size_t len = 0;
		int ret;

		while (pos.bi_size && nr < DST_SEGS) {
			bv[nr] = bio_iter_iovec(bio, pos);
			len += bv[nr].bv_len;
			bio_advance_iter_single(bio, &pos, bv[nr].bv_len);
			nr++;
		}
		ret = dst_xfer_bvecs(sock, bv, nr, len, send,
				     more || pos.bi_size);
		if (!dst_sock_account(ret, len, &total, send))
			break;
		iter = pos;
	}
	memalloc_noreclaim_restore(noreclaim);
	return total;
}

int dst_sock_send_bio(struct socket *sock, struct bio *bio, u32 skip,
		      bool more)
{
	return dst_sock_xfer_bio(sock, bio, skip, true, more);
}

int dst_sock_recv_bio(struct socket *sock, struct bio *bio, u32 skip)
{
	return dst_sock_xfer_bio(sock, bio, skip, false, false);
}

/*
 * The same for buffers of whole pages (the export's requests): bytes
 * [@skip, @len) of the buffer go out or come in.
 */
static int dst_sock_xfer_pages(struct socket *sock, struct page **pages,
			       u32 skip, u32 len, bool send, bool more)
{
	struct bio_vec bv[DST_SEGS];
	unsigned int noreclaim;
	int total = 0;

	noreclaim = memalloc_noreclaim_save();
	while (skip < len) {
		unsigned int nr = 0;
		u32 pos = skip;
		size_t n = 0;
		int ret;

		while (pos < len && nr < DST_SEGS) {
			u32 off = pos % PAGE_SIZE;
			u32 seg = min_t(u32, len - pos, PAGE_SIZE - off);

			bvec_set_page(&bv[nr++], pages[pos / PAGE_SIZE], seg, off);
			pos += seg;
			n += seg;
		}
		ret = dst_xfer_bvecs(sock, bv, nr, n, send, more || pos < len);
		if (!dst_sock_account(ret, n, &total, send))
			break;
		skip = pos;
	}
	memalloc_noreclaim_restore(noreclaim);
	return total;
}

int dst_sock_send_pages(struct socket *sock, struct page **pages, u32 skip,
			u32 len, bool more)
{
	return dst_sock_xfer_pages(sock, pages, skip, len, true, more);
}

int dst_sock_recv_pages(struct socket *sock, struct page **pages, u32 skip,
			u32 len)
{
	return dst_sock_xfer_pages(sock, pages, skip, len, false, false);
}

/*
 * Whether a receive would find something: data, end of stream or an
 * error.  Lockless; a full barrier must order the caller's earlier stores
 * before it (pairs with the data-ready callback, which runs after the data
 * is queued).
 */
bool dst_sock_readable(struct socket *sock)
{
	struct sock *sk = sock->sk;

	return !skb_queue_empty_lockless(&sk->sk_receive_queue) ||
	       READ_ONCE(sk->sk_err) ||
	       (READ_ONCE(sk->sk_shutdown) & RCV_SHUTDOWN);
}

/* Sends what earlier sends held back with MSG_MORE. */
void dst_sock_push(struct socket *sock)
{
	tcp_sock_set_cork(sock->sk, false);
}

/* ---- listening sockets (exports) ---- */

static void dst_sk_data_ready(struct sock *sk);
static void dst_sk_write_space(struct sock *sk);
static void dst_sk_state_change(struct sock *sk);
static void dst_sock_restore_child(struct socket *lsock, struct sock *sk);

int dst_sock_listen(int family, const u8 *addr, u16 port, u32 scope_id,
		    struct socket **out)
{
	struct sockaddr_storage ss;
	struct socket *sock;
	int len, err;

	len = dst_sock_new(family, addr, port, scope_id, &ss, &sock);
	if (len < 0)
		return len;
	sock_set_reuseaddr(sock->sk);
	err = kernel_bind(sock, (struct sockaddr *)&ss, len);
	if (!err)
		err = kernel_listen(sock, 64);
	if (err) {
		sock_release(sock);
		return err;
	}
	*out = sock;
	return 0;
}

/*
 * Accepts a connection without waiting (-EAGAIN: none).  The new socket
 * blocks for at most @timeout_ms (the handshake), and a peer that stops
 * acknowledging data for that long is dropped.
 */
int dst_sock_accept(struct socket *lsock, unsigned int timeout_ms,
		    struct socket **out)
{
	struct socket *sock;
	struct sock *sk;
	int err;

	err = kernel_accept(lsock, &sock, O_NONBLOCK);
	if (err)
		return err;
	sk = sock->sk;
	dst_sock_restore_child(lsock, sk);
	dst_sock_set_timeouts(sk, timeout_ms);
	*out = sock;
	return 0;
}

/* The peer's address: family 4 or 6, 16 address bytes, port. */
int dst_sock_peer(struct socket *sock, int *family, u8 *addr, u16 *port,
		  u32 *scope_id)
{
	struct sockaddr_storage ss = {};
	int err;

	err = kernel_getpeername(sock, (struct sockaddr *)&ss);
	if (err < 0)
		return err;
	if (ss.ss_family == AF_INET) {
		struct sockaddr_in *sin = (struct sockaddr_in *)&ss;

		*family = 4;
		memset(addr, 0, 16);
		memcpy(addr, &sin->sin_addr, 4);
		*port = ntohs(sin->sin_port);
		*scope_id = 0;
	} else if (ss.ss_family == AF_INET6) {
		struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;

		*family = 6;
		memcpy(addr, &sin6->sin6_addr, 16);
		*port = ntohs(sin6->sin6_port);
		*scope_id = sin6->sin6_scope_id;
	} else {
		return -EAFNOSUPPORT;
	}
	return 0;
}

/* ---- socket callbacks ---- */

struct dst_sock_cb {
	void (*fn)(void *data, int what);
	void *data;
	void (*data_ready)(struct sock *sk);
	void (*write_space)(struct sock *sk);
	void (*state_change)(struct sock *sk);
};

/*
 * The callback block of a watched socket; NULL in a connection not yet
 * accepted from a watched listening socket (SK_USER_DATA_NOCOPY: such a
 * child is a copy of the listener, and must not carry the listener's block,
 * which is freed when the listener is unwatched, maybe before the child).
 * The caller holds sk_callback_lock.
 */
static struct dst_sock_cb *dst_cb_of(struct sock *sk)
{
	return __locked_read_sk_user_data_with_flags(sk, 0);
}

static void dst_sk_data_ready(struct sock *sk)
{
	struct dst_sock_cb *cb;

	read_lock_bh(&sk->sk_callback_lock);
	cb = dst_cb_of(sk);
	if (cb)
		cb->fn(cb->data, DST_SOCK_READABLE);
	read_unlock_bh(&sk->sk_callback_lock);
}

static void dst_sk_write_space(struct sock *sk)
{
	struct dst_sock_cb *cb;

	read_lock_bh(&sk->sk_callback_lock);
	cb = dst_cb_of(sk);
	if (cb && sk_stream_is_writeable(sk)) {
		clear_bit(SOCK_NOSPACE, &sk->sk_socket->flags);
		cb->fn(cb->data, DST_SOCK_WRITABLE);
	}
	read_unlock_bh(&sk->sk_callback_lock);
}

static void dst_sk_state_change(struct sock *sk)
{
	struct dst_sock_cb *cb;

	read_lock_bh(&sk->sk_callback_lock);
	cb = dst_cb_of(sk);
	if (cb) {
		switch (sk->sk_state) {
		case TCP_CLOSE:
		case TCP_CLOSE_WAIT:
		case TCP_LAST_ACK:
		case TCP_FIN_WAIT1:
		case TCP_FIN_WAIT2:
			cb->fn(cb->data, DST_SOCK_CLOSED);
			break;
		}
	}
	read_unlock_bh(&sk->sk_callback_lock);
}

/*
 * A connection accepted on a watched listening socket inherits its
 * callbacks (not its callback block, see dst_cb_of()): give it back the
 * stock ones, unwatched.
 */
static void dst_sock_restore_child(struct socket *lsock, struct sock *sk)
{
	void (*data_ready)(struct sock *sk) = NULL;
	void (*write_space)(struct sock *sk) = NULL;
	void (*state_change)(struct sock *sk) = NULL;
	struct dst_sock_cb *cb;

	read_lock_bh(&lsock->sk->sk_callback_lock);
	cb = dst_cb_of(lsock->sk);
	if (cb) {
		data_ready = cb->data_ready;
		write_space = cb->write_space;
		state_change = cb->state_change;
	}
	read_unlock_bh(&lsock->sk->sk_callback_lock);

	write_lock_bh(&sk->sk_callback_lock);
	if (sk->sk_data_ready == dst_sk_data_ready && data_ready)
		sk->sk_data_ready = data_ready;
	if (sk->sk_write_space == dst_sk_write_space && write_space)
		sk->sk_write_space = write_space;
	if (sk->sk_state_change == dst_sk_state_change && state_change)
		sk->sk_state_change = state_change;
	rcu_assign_sk_user_data(sk, NULL);
	write_unlock_bh(&sk->sk_callback_lock);
}

int dst_sock_set_callbacks(struct socket *sock,
			   void (*fn)(void *data, int what), void *data)
{
	struct sock *sk = sock->sk;
	struct dst_sock_cb *cb = kzalloc(sizeof(*cb), GFP_KERNEL);

	if (!cb)
		return -ENOMEM;
	cb->fn = fn;
	cb->data = data;
	write_lock_bh(&sk->sk_callback_lock);
	cb->data_ready = sk->sk_data_ready;
	cb->write_space = sk->sk_write_space;
	cb->state_change = sk->sk_state_change;
	__rcu_assign_sk_user_data_with_flags(sk, cb, SK_USER_DATA_NOCOPY);
	sk->sk_data_ready = dst_sk_data_ready;
	sk->sk_write_space = dst_sk_write_space;
	sk->sk_state_change = dst_sk_state_change;
	write_unlock_bh(&sk->sk_callback_lock);
	return 0;
}

/* After this returns, no callback runs with the data given above. */
void dst_sock_clear_callbacks(struct socket *sock)
{
	struct sock *sk = sock->sk;
	struct dst_sock_cb *cb;

	write_lock_bh(&sk->sk_callback_lock);
	cb = dst_cb_of(sk);
	if (cb) {
		sk->sk_data_ready = cb->data_ready;
		sk->sk_write_space = cb->write_space;
		sk->sk_state_change = cb->state_change;
		rcu_assign_sk_user_data(sk, NULL);
	}
	write_unlock_bh(&sk->sk_callback_lock);
	kfree(cb);
}

/* ---- delayed work, for dst/job.rs ---- */

void dst_dwork_init(struct delayed_work *dw, void (*fn)(struct work_struct *))
{
	INIT_DELAYED_WORK(dw, fn);
}

bool dst_dwork_queue(struct delayed_work *dw, struct workqueue_struct *wq,
		     unsigned int delay_ms)
{
	return queue_delayed_work(wq, dw, msecs_to_jiffies(delay_ms));
}

bool dst_dwork_cancel(struct delayed_work *dw)
{
	return cancel_delayed_work(dw);
}

bool dst_dwork_disable_sync(struct delayed_work *dw)
{
	return disable_delayed_work_sync(dw);
}

u64 dst_now_ms(void)
{
	return ktime_get_ns() / NSEC_PER_MSEC;
}

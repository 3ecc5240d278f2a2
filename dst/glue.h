/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Interface between dst's C glue and its Rust code.  Every function here is
 * declared again, by hand, in dst/glue.rs: keep the two in step.
 */
#ifndef DST_GLUE_H
#define DST_GLUE_H

#include <linux/types.h>

struct bio;
struct bio_set;
struct block_device;
struct file;
struct gendisk;
struct genl_info;
struct queue_limits;
struct workqueue_struct;

/* ---- generic netlink (genl_glue.c) ---- */

/* Opaque to Rust: a dump in progress. */
struct dst_nl_dump;

/* Kinds of attribute values; mirrors dst_proto::genl::Kind. */
enum dst_nl_kind {
	DST_NL_U8 = 1,
	DST_NL_U32 = 2,
	DST_NL_U64 = 3,
	DST_NL_STR = 4,
	DST_NL_NESTED = 5,
};

/* One attribute of a policy set. */
struct dst_nl_attr {
	u16 id;
	u8 kind;		/* enum dst_nl_kind */
	u8 nested_set;		/* DST_NL_NESTED: index of the inner set */
	u16 min;		/* DST_NL_U8: smallest value */
	u16 max;		/* DST_NL_U8: largest value; DST_NL_STR: max length */
};

struct dst_nl_set {
	const struct dst_nl_attr *attrs;
	u32 n;
};

struct dst_nl_cmd {
	u8 cmd;
	u8 doit;
	u8 dumpit;
	u8 set;			/* index of the command's policy set */
};

struct dst_nl_spec {
	const char *name;	/* NUL-terminated */
	const char *mcgrp;	/* NUL-terminated */
	u32 version;
	u32 nsets;
	const struct dst_nl_set *sets;
	u32 ncmds;
	const struct dst_nl_cmd *cmds;
	/* Called for every request, with the priv given at registration. */
	int (*doit)(void *priv, u8 cmd, const void *buf, u32 len,
		    struct genl_info *info);
	/* Adds entries from *cursor on; returns 0 or a negative errno. */
	int (*dumpit)(void *priv, u8 cmd, long *cursor,
		      struct dst_nl_dump *dump);
};

int dst_genl_register(const struct dst_nl_spec *spec, void *priv);
void dst_genl_unregister(void);
int dst_genl_reply(struct genl_info *info, u8 cmd, const void *buf, u32 len);
void dst_genl_set_err(struct genl_info *info, const char *msg);
int dst_genl_dump_put(struct dst_nl_dump *dump, u8 cmd, const void *buf, u32 len);
int dst_genl_multicast(u8 cmd, const void *buf, u32 len);

/* ---- block layer (blk_glue.c) ---- */

void dst_limits_init(struct queue_limits *lim);
bool dst_bdev_discard(struct block_device *bdev);
void dst_limits_stack_remote(struct queue_limits *lim, u32 min_block,
			     u32 pref_block, bool cache, bool write_zeroes,
			     bool rotational);
int dst_disk_cap_sectors(struct gendisk *disk, u32 max_sectors);
struct gendisk *dst_alloc_disk(struct queue_limits *lim, u32 max_sectors,
			       bool discard, bool fua);
int dst_add_disk(struct gendisk *disk);
int dst_bioset_init(struct bio_set *bs, unsigned int front_pad, bool rescuer);
struct bio *dst_bio_clone(struct block_device *bdev, struct bio *src,
			  struct bio_set *bs, bool strip_preflush);
struct bio *dst_bio_alloc_flush(struct block_device *bdev, struct bio_set *bs);
extern const unsigned int dst_blk_feat_io_stat;
struct bio *dst_bio_split(struct bio *bio, unsigned int sectors,
			  struct bio_set *bs);
struct file *dst_bdev_open(const char *path, void *holder);
struct file *dst_bdev_open_dev(dev_t devt, void *holder);
u64 dst_bdev_nr_sectors(struct block_device *bdev);
bool dst_bdev_synchronous(struct block_device *bdev);
void dst_bdev_name(struct block_device *bdev, char *buf, size_t len);
void dst_wait_var(void *var, bool (*done)(void *var));
long dst_wait_var_timeout(void *var, bool (*done)(void *var), unsigned int ms);
struct workqueue_struct *dst_alloc_workqueue(const char *name);
extern unsigned int dst_race_delay_us;
void dst_race_delay(unsigned int us);
struct page;
struct page **dst_pages_alloc(unsigned int n);
void dst_pages_free(struct page **pages, unsigned int n);
struct bio *dst_bio_pages(struct block_device *bdev, struct page **pages,
			  u32 bytes, bool write, bool fua, u64 sector,
			  void (*end_io)(struct bio *), void *private);
int dst_bdev_flush(struct block_device *bdev);
int dst_bdev_trim(struct block_device *bdev, u64 sector, u64 nr);
int dst_bdev_zeroout(struct block_device *bdev, u64 sector, u64 nr,
		     bool nounmap);
void *dst_bio_private(struct bio *bio);
void dst_bio_kfree(struct bio *bio);

/* ---- sockets and jobs (net_glue.c) ---- */

struct socket;
struct delayed_work;
struct work_struct;

/* What a socket callback reports. */
enum dst_sock_event {
	DST_SOCK_READABLE = 1,
	DST_SOCK_WRITABLE = 2,
	DST_SOCK_CLOSED = 3,
};

int dst_sock_client(int family, const u8 *addr, u16 port, u32 scope_id,
		    unsigned int timeout_ms, struct socket **out);
int dst_sock_connect(struct socket *sock, int family, const u8 *addr,
		     u16 port, u32 scope_id);
void dst_sock_release(struct socket *sock);
int dst_sock_send(struct socket *sock, const void *buf, size_t len,
		  bool nonblock, bool more);
int dst_sock_recv(struct socket *sock, void *buf, size_t len, bool nonblock);
int dst_sock_send_bio(struct socket *sock, struct bio *bio, u32 skip,
		      bool more);
int dst_sock_recv_bio(struct socket *sock, struct bio *bio, u32 skip);
int dst_sock_send_pages(struct socket *sock, struct page **pages, u32 skip,
			u32 len, bool more);
int dst_sock_recv_pages(struct socket *sock, struct page **pages, u32 skip,
			u32 len);
void dst_sock_push(struct socket *sock);
bool dst_sock_readable(struct socket *sock);
int dst_sock_listen(int family, const u8 *addr, u16 port, u32 scope_id,
		    struct socket **out);
int dst_sock_accept(struct socket *lsock, unsigned int timeout_ms,
		    struct socket **out);
int dst_sock_peer(struct socket *sock, int *family, u8 *addr, u16 *port,
		  u32 *scope_id);
int dst_sock_set_callbacks(struct socket *sock,
			   void (*fn)(void *data, int what), void *data);
void dst_sock_clear_callbacks(struct socket *sock);

void dst_dwork_init(struct delayed_work *dw, void (*fn)(struct work_struct *));
bool dst_dwork_queue(struct delayed_work *dw, struct workqueue_struct *wq,
		     unsigned int delay_ms);
bool dst_dwork_cancel(struct delayed_work *dw);
bool dst_dwork_disable_sync(struct delayed_work *dw);
u64 dst_now_ms(void);

#endif /* DST_GLUE_H */

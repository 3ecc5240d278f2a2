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
struct gendisk *dst_alloc_disk(struct queue_limits *lim);
int dst_add_disk(struct gendisk *disk);
int dst_bioset_init(struct bio_set *bs, unsigned int front_pad, bool rescuer);
struct bio *dst_bio_clone(struct block_device *bdev, struct bio *src,
			  struct bio_set *bs);
struct bio *dst_bio_alloc_flush(struct block_device *bdev, struct bio_set *bs);
struct bio *dst_bio_split(struct bio *bio, unsigned int sectors,
			  struct bio_set *bs);
struct file *dst_bdev_open(const char *path, void *holder);
u64 dst_bdev_nr_sectors(struct block_device *bdev);
bool dst_bdev_synchronous(struct block_device *bdev);
void dst_bdev_name(struct block_device *bdev, char *buf, size_t len);
void dst_wait_var(void *var, bool (*done)(void *var));
struct workqueue_struct *dst_alloc_workqueue(const char *name);

#endif /* DST_GLUE_H */

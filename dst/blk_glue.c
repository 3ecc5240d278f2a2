// SPDX-License-Identifier: GPL-2.0
/*
 * Block layer glue for dst: the helpers Linux 6.12 only has as inline
 * functions or macros (which bindgen cannot see), and the constants
 * (GFP_NOIO, BLK_OPEN_*) that are macros.  No logic lives here.
 */

#include <linux/bio.h>
#include <linux/blkdev.h>
#include <linux/wait_bit.h>
#include <linux/workqueue.h>

#include "glue.h"

void dst_limits_init(struct queue_limits *lim)
{
	blk_set_stacking_limits(lim);
	/* Kept only if every leg supports it (see blk_stack_limits()). */
	lim->features |= BLK_FEAT_NOWAIT;
}

int dst_add_disk(struct gendisk *disk)
{
	return add_disk(disk);
}

int dst_bioset_init(struct bio_set *bs, unsigned int front_pad, bool rescuer)
{
	/*
	 * bioset_init() leaves fields it does not need (the per-cpu cache)
	 * as they are: C users embed bio_sets in zeroed memory, Rust's
	 * in-place initialisation does not zero.
	 */
	memset(bs, 0, sizeof(*bs));
	/*
	 * The per-cpu cache recycles clones of bios that allow it
	 * (REQ_ALLOC_CACHE: io_uring and direct I/O) without the slab.
	 */
	return bioset_init(bs, BIO_POOL_SIZE, front_pad,
			   BIOSET_PERCPU_CACHE |
			   (rescuer ? BIOSET_NEED_RESCUER : 0));
}

/*
 * A clone never carries REQ_NOWAIT: a leg answering BLK_STS_AGAIN to a
 * mirror write would look like a failed leg.  The parent's NOWAIT promise
 * is kept by not blocking on anything of dst's own; like md, a clone may
 * still wait for its mempool under memory pressure.
 */
struct bio *dst_bio_clone(struct block_device *bdev, struct bio *src,
			  struct bio_set *bs)
{
	struct bio *clone = bio_alloc_clone(bdev, src, GFP_NOIO, bs);

	if (clone)
		clone->bi_opf &= ~REQ_NOWAIT;
	return clone;
}

struct bio *dst_bio_alloc_flush(struct block_device *bdev, struct bio_set *bs)
{
	return bio_alloc_bioset(bdev, 0, REQ_OP_WRITE | REQ_PREFLUSH | REQ_SYNC,
				GFP_NOIO, bs);
}

struct bio *dst_bio_split(struct bio *bio, unsigned int sectors,
			  struct bio_set *bs)
{
	return bio_split(bio, sectors, GFP_NOIO, bs);
}

struct file *dst_bdev_open(const char *path, void *holder)
{
	/* A non-NULL holder makes the open exclusive. */
	return bdev_file_open_by_path(path, BLK_OPEN_READ | BLK_OPEN_WRITE,
				      holder, NULL);
}

u64 dst_bdev_nr_sectors(struct block_device *bdev)
{
	return bdev_nr_sectors(bdev);
}

bool dst_bdev_synchronous(struct block_device *bdev)
{
	return bdev_synchronous(bdev);
}

void dst_bdev_name(struct block_device *bdev, char *buf, size_t len)
{
	snprintf(buf, len, "%pg", bdev);
}

void dst_wait_var(void *var, bool (*done)(void *var))
{
	wait_var_event(var, done(var));
}

/*
 * Unbound and high priority: its work (the second leg of a large mirror
 * write) should run at once on another CPU.  WQ_MEM_RECLAIM: writeback
 * through dst may be what frees memory.
 */
struct workqueue_struct *dst_alloc_workqueue(const char *name)
{
	return alloc_workqueue("%s", WQ_UNBOUND | WQ_HIGHPRI | WQ_MEM_RECLAIM,
			       0, name);
}

/* Implemented in Rust (dst/disk.rs). */
void dst_disk_submit_bio(struct bio *bio);
int dst_disk_open(struct gendisk *disk, blk_mode_t mode);
void dst_disk_release(struct gendisk *disk);

/*
 * In C for THIS_MODULE: an open dst device pins the module, and the table
 * outlives every gendisk that points to it.
 */
static const struct block_device_operations dst_fops = {
	.owner = THIS_MODULE,
	.submit_bio = dst_disk_submit_bio,
	.open = dst_disk_open,
	.release = dst_disk_release,
};

struct gendisk *dst_alloc_disk(struct queue_limits *lim)
{
	struct gendisk *disk;

	if (lim->features & BLK_FEAT_ZONED)
		return ERR_PTR(-EOPNOTSUPP);
	lim->features |= BLK_FEAT_IO_STAT;
	/*
	 * Sizes and segments are the legs' business: each leg splits what it
	 * gets to its own limits (blk-mq always does, bio-based drivers must).
	 * Splitting here too would only multiply bios, and a REQ_NOWAIT bio
	 * that needs a split is failed with EAGAIN, sending io_uring to a
	 * worker thread.  Block sizes, alignment and discard stay stacked.
	 */
	lim->max_hw_sectors = UINT_MAX;
	lim->max_dev_sectors = 0;
	lim->max_user_sectors = 0;
	lim->max_segments = USHRT_MAX;
	lim->max_segment_size = UINT_MAX;
	lim->seg_boundary_mask = BLK_SEG_BOUNDARY_MASK;
	lim->virt_boundary_mask = 0;
	/* A macro, for its lockdep key. */
	disk = blk_alloc_disk(lim, NUMA_NO_NODE);
	if (IS_ERR(disk))
		return disk;
	disk->fops = &dst_fops;
	/* Dynamic dev_t from the extended range, partitions allowed. */
	disk->major = 0;
	disk->minors = 0;
	return disk;
}

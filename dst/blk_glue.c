// SPDX-License-Identifier: GPL-2.0
/*
 * Block layer glue for dst: the helpers Linux 6.12 only has as inline
 * functions or macros (which bindgen cannot see), and the constants
 * (GFP_NOIO, BLK_OPEN_*) that are macros.  No logic lives here.
 */

#include <linux/bio.h>
#include <linux/blk-mq.h>
#include <linux/blkdev.h>
#include <linux/delay.h>
#include <linux/moduleparam.h>
#include <linux/wait_bit.h>
#include <linux/workqueue.h>

#include "glue.h"

/* The queue feature "keeps I/O statistics" (iostats), a macro. */
const unsigned int dst_blk_feat_io_stat = (__force unsigned int)BLK_FEAT_IO_STAT;

void dst_limits_init(struct queue_limits *lim)
{
	blk_set_stacking_limits(lim);
	/* Kept only if every leg supports it (see blk_stack_limits()). */
	lim->features |= BLK_FEAT_NOWAIT;
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
			  struct bio_set *bs, bool strip_preflush)
{
	struct bio *clone = bio_alloc_clone(bdev, src, GFP_NOIO, bs);

	if (clone) {
		clone->bi_opf &= ~REQ_NOWAIT;
		if (strip_preflush)
			clone->bi_opf &= ~REQ_PREFLUSH;
	}
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

/*
 * Opens the block device @devt again: for reading and writing, exclusively
 * for @holder, or (NULL @holder) shared and read-only.
 */
struct file *dst_bdev_open_dev(dev_t devt, void *holder)
{
	if (holder)
		return bdev_file_open_by_dev(devt, BLK_OPEN_READ | BLK_OPEN_WRITE,
					     holder, NULL);
	return bdev_file_open_by_dev(devt, BLK_OPEN_READ, NULL, NULL);
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
 * As dst_wait_var(), for at most @ms milliseconds, and a fatal signal ends
 * the wait.  Returns > 0 once done(@var), 0 on timeout, -ERESTARTSYS if
 * killed.  (6.12 has no wait_var_event_killable_timeout().)
 */
long dst_wait_var_timeout(void *var, bool (*done)(void *var), unsigned int ms)
{
	long timeout = msecs_to_jiffies(ms) ?: 1;

	might_sleep();
	if (done(var))
		return timeout;
	/* The macro declares its own __ret, from @timeout. */
	return ___wait_var_event(var, ___wait_cond_timeout(done(var)),
				 TASK_KILLABLE, 0, timeout,
				 __ret = schedule_timeout(__ret));
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
ssize_t dst_disk_show_name(struct gendisk *disk, char *buf);

/*
 * /sys/block/dstN/dst/name: the device's name, for udev's /dev/dst/NAME
 * links (as dm's dm/name).  The group is created before the disk's "add"
 * uevent, and removed by del_gendisk() before the owner goes.
 */
static ssize_t name_show(struct device *dev, struct device_attribute *attr,
			 char *buf)
{
	return dst_disk_show_name(dev_to_disk(dev), buf);
}
static DEVICE_ATTR_RO(name);

static struct attribute *dst_disk_attrs[] = {
	&dev_attr_name.attr,
	NULL,
};

static const struct attribute_group dst_disk_group = {
	.name = "dst",
	.attrs = dst_disk_attrs,
};

static const struct attribute_group *dst_disk_groups[] = {
	&dst_disk_group,
	NULL,
};

int dst_add_disk(struct gendisk *disk)
{
	return device_add_disk(NULL, disk, dst_disk_groups);
}

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

/* Whether @bdev takes discards. */
bool dst_bdev_discard(struct block_device *bdev)
{
	return bdev_max_discard_sectors(bdev) != 0;
}

/*
 * Stacks the constraints of a remote leg: its block sizes, and the
 * capabilities of its server.
 */
void dst_limits_stack_remote(struct queue_limits *lim, u32 min_block,
			     u32 pref_block, bool cache, bool write_zeroes,
			     bool rotational)
{
	lim->logical_block_size = max3(lim->logical_block_size, min_block,
				       (u32)SECTOR_SIZE);
	lim->physical_block_size = max(lim->physical_block_size,
				       lim->logical_block_size);
	lim->io_min = max(lim->io_min, min_t(u32, pref_block, SZ_1M));
	if (!write_zeroes)
		lim->max_write_zeroes_sectors = 0;
	if (cache)
		lim->features |= BLK_FEAT_WRITE_CACHE;
	if (rotational)
		lim->features |= BLK_FEAT_ROTATIONAL;
}

/*
 * Allocates a dst disk.  @max_sectors caps the transfer size (remote legs'
 * servers have a maximum); @discard says every leg takes discards; @fua
 * false drops FUA (a remote leg's server lacks it: the block layer then
 * flushes after such writes).
 */
struct gendisk *dst_alloc_disk(struct queue_limits *lim, u32 max_sectors,
			       bool discard, bool fua)
{
	struct gendisk *disk;

	if (lim->features & BLK_FEAT_ZONED)
		return ERR_PTR(-EOPNOTSUPP);
	/* Not zoned (the stacking default is "unlimited"). */
	lim->max_zone_append_sectors = 0;
	lim->features |= BLK_FEAT_IO_STAT;
	if (!fua)
		lim->features &= ~BLK_FEAT_FUA;
	if (!discard)
		lim->max_hw_discard_sectors = 0;
	else
		lim->max_hw_discard_sectors = min(lim->max_hw_discard_sectors,
						  max_sectors);
	lim->max_write_zeroes_sectors = min(lim->max_write_zeroes_sectors,
					    max_sectors);
	/*
	 * Sizes and segments are the legs' business: each leg splits what it
	 * gets to its own limits (blk-mq always does, bio-based drivers must).
	 * Splitting here too would only multiply bios, and a REQ_NOWAIT bio
	 * that needs a split is failed with EAGAIN, sending io_uring to a
	 * worker thread.  Block sizes, alignment and discard stay stacked.
	 */
	lim->max_hw_sectors = max_sectors;
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

/*
 * Lowers the largest request of a live @disk to @max_sectors (a remote leg
 * with a smaller maximum joins).  The queue is frozen for the commit, so
 * submit_bio calls under way (which split to the old limit) end first.
 * Bios split earlier and held back by dst itself (parked behind a resync
 * barrier) keep their size; the remote leg splits them (Remote::submit).
 */
int dst_disk_cap_sectors(struct gendisk *disk, u32 max_sectors)
{
	struct request_queue *q = disk->queue;
	struct queue_limits lim = queue_limits_start_update(q);

	if (lim.max_hw_sectors <= max_sectors &&
	    lim.max_hw_discard_sectors <= max_sectors &&
	    lim.max_write_zeroes_sectors <= max_sectors) {
		queue_limits_cancel_update(q);
		return 0;
	}
	lim.max_hw_sectors = min(lim.max_hw_sectors, max_sectors);
	lim.max_hw_discard_sectors = min(lim.max_hw_discard_sectors,
					 max_sectors);
	lim.max_write_zeroes_sectors = min(lim.max_write_zeroes_sectors,
					   max_sectors);
	return queue_limits_commit_update_frozen(q, &lim);
}

/* ---- page buffers and their bios, for resync (dst/io.rs, dst/bio.rs) ---- */

struct page **dst_pages_alloc(unsigned int n)
{
	struct page **pages = kcalloc(n, sizeof(*pages), GFP_KERNEL);
	unsigned int i;

	if (!pages)
		return NULL;
	for (i = 0; i < n; i++) {
		pages[i] = alloc_page(GFP_KERNEL);
		if (!pages[i]) {
			while (i--)
				__free_page(pages[i]);
			kfree(pages);
			return NULL;
		}
	}
	return pages;
}

void dst_pages_free(struct page **pages, unsigned int n)
{
	unsigned int i;

	for (i = 0; i < n; i++)
		__free_page(pages[i]);
	kfree(pages);
}

/*
 * A bio over the first @bytes of @pages at @sector of @bdev (NULL for a
 * leg that is not a block device), reading or writing; a write of no bytes
 * is a cache flush.  Allocated with
 * kmalloc (any number of pages); free it with dst_bio_kfree().
 */
struct bio *dst_bio_pages(struct block_device *bdev, struct page **pages,
			  u32 bytes, bool write, bool fua, u64 sector,
			  void (*end_io)(struct bio *), void *private)
{
	unsigned int n = DIV_ROUND_UP(bytes, PAGE_SIZE), i;
	struct bio *bio = bio_kmalloc(n, GFP_NOIO);

	if (!bio)
		return NULL;
	bio_init(bio, bdev, bio->bi_inline_vecs, n,
		 write ? REQ_OP_WRITE | (fua ? REQ_FUA : 0) |
			 (bytes ? 0 : REQ_PREFLUSH) : REQ_OP_READ);
	for (i = 0; i < n; i++) {
		u32 len = min_t(u32, bytes - i * PAGE_SIZE, PAGE_SIZE);

		__bio_add_page(bio, pages[i], len, 0);
	}
	bio->bi_iter.bi_sector = sector;
	bio->bi_end_io = end_io;
	bio->bi_private = private;
	return bio;
}

/*
 * The export's rarer commands, done synchronously by its worker (they may
 * sleep): flush the write cache, discard, write zeroes (@nounmap: keep the
 * blocks allocated).  Return 0 or a negative errno.
 */
int dst_bdev_flush(struct block_device *bdev)
{
	return blkdev_issue_flush(bdev);
}

int dst_bdev_trim(struct block_device *bdev, u64 sector, u64 nr)
{
	if (!bdev_max_discard_sectors(bdev))
		return -EOPNOTSUPP;
	return blkdev_issue_discard(bdev, sector, nr, GFP_NOIO);
}

int dst_bdev_zeroout(struct block_device *bdev, u64 sector, u64 nr,
		     bool nounmap)
{
	return blkdev_issue_zeroout(bdev, sector, nr, GFP_NOIO,
				    nounmap ? BLKDEV_ZERO_NOUNMAP : 0);
}

void *dst_bio_private(struct bio *bio)
{
	return bio->bi_private;
}

void dst_bio_kfree(struct bio *bio)
{
	bio_uninit(bio);
	kfree(bio);
}

/*
 * Testing only: dst.race_delay_us busy-waits that long inside a race
 * window that is otherwise a few instructions wide (a mirror write
 * between registering at the resync barrier and looking at it), so that
 * a test can make the race happen at will.  0 (the default) turns it off;
 * at most 1000.
 */
unsigned int dst_race_delay_us;
module_param_named(race_delay_us, dst_race_delay_us, uint, 0644);
MODULE_PARM_DESC(race_delay_us,
		 "testing only: widen a race window by this many microseconds (0: off, at most 1000)");

/* Called (from Rust, which reads the parameter first) only when it is set. */
void dst_race_delay(unsigned int us)
{
	udelay(min(us, 1000U));
}

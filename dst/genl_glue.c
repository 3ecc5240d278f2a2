// SPDX-License-Identifier: GPL-2.0
/*
 * Generic netlink glue for dst.
 *
 * Linux 6.12 has no Rust binding for generic netlink, so this file registers
 * the family and hands every request to Rust.  It does not know any command
 * or attribute: the policies are built at load time from the table the Rust
 * side derives from the shared schema (userspace/dst-proto/src/genl.rs), and
 * messages are encoded and decoded in Rust.  This file only moves bytes
 * between sk_buffs and Rust, and enforces CAP_SYS_ADMIN.
 */

#include <linux/capability.h>
#include <linux/slab.h>
#include <linux/string.h>
#include <net/genetlink.h>

#include "glue.h"

struct dst_nl_dump {
	struct sk_buff *skb;
	struct netlink_callback *cb;
	int added;
};

static struct genl_family dst_family;
static struct genl_multicast_group dst_mcgrp;
static struct genl_ops *dst_ops;
static struct nla_policy **dst_policies;
static u32 dst_npolicies;
static void *dst_priv;
/* Multicasts only while the family is registered. */
static DEFINE_MUTEX(dst_mc_lock);
static bool dst_registered;
static const struct dst_nl_spec *dst_spec;

static int dst_genl_doit(struct sk_buff *skb, struct genl_info *info)
{
	if (!netlink_capable(skb, CAP_SYS_ADMIN)) {
		NL_SET_ERR_MSG(info->extack, "dst: CAP_SYS_ADMIN is required");
		return -EPERM;
	}
	return dst_spec->doit(dst_priv, info->genlhdr->cmd,
			   genlmsg_data(info->genlhdr),
			   genlmsg_len(info->genlhdr), info);
}

static int dst_genl_dumpit(struct sk_buff *skb, struct netlink_callback *cb)
{
	const struct genlmsghdr *ghdr = nlmsg_data(cb->nlh);
	struct dst_nl_dump dump = { .skb = skb, .cb = cb };
	int err;

	if (!netlink_capable(cb->skb, CAP_SYS_ADMIN))
		return -EPERM;
	err = dst_spec->dumpit(dst_priv, ghdr->cmd, &cb->args[0], &dump);
	if (err < 0)
		return err;
	return skb->len;
}

void dst_genl_set_err(struct genl_info *info, const char *msg)
{
	struct netlink_ext_ack *extack = info->extack;

	if (!extack)
		return;
	strscpy(extack->_msg_buf, msg, sizeof(extack->_msg_buf));
	extack->_msg = extack->_msg_buf;
}

int dst_genl_reply(struct genl_info *info, u8 cmd, const void *buf, u32 len)
{
	struct sk_buff *skb;
	void *hdr;

	skb = genlmsg_new(len, GFP_KERNEL);
	if (!skb)
		return -ENOMEM;
	hdr = genlmsg_put_reply(skb, info, &dst_family, 0, cmd);
	if (!hdr) {
		nlmsg_free(skb);
		return -EMSGSIZE;
	}
	skb_put_data(skb, buf, len);
	genlmsg_end(skb, hdr);
	return genlmsg_reply(skb, info);
}

int dst_genl_dump_put(struct dst_nl_dump *dump, u8 cmd, const void *buf,
		      u32 len)
{
	struct sk_buff *skb = dump->skb;
	void *hdr;

	hdr = genlmsg_put(skb, NETLINK_CB(dump->cb->skb).portid,
			  dump->cb->nlh->nlmsg_seq, &dst_family, NLM_F_MULTI,
			  cmd);
	if (!hdr || skb_tailroom(skb) < NLA_ALIGN(len)) {
		if (hdr)
			genlmsg_cancel(skb, hdr);
		/* An entry that does not fit an empty message never will. */
		return dump->added ? -EMSGSIZE : -E2BIG;
	}
	skb_put_data(skb, buf, len);
	genlmsg_end(skb, hdr);
	dump->added++;
	return 0;
}

int dst_genl_multicast(u8 cmd, const void *buf, u32 len)
{
	struct sk_buff *skb;
	void *hdr;
	int err = 0;

	mutex_lock(&dst_mc_lock);
	if (!dst_registered || !genl_has_listeners(&dst_family, &init_net, 0))
		goto out;
	err = -ENOMEM;
	skb = genlmsg_new(len, GFP_KERNEL);
	if (!skb)
		goto out;
	hdr = genlmsg_put(skb, 0, 0, &dst_family, 0, cmd);
	if (!hdr) {
		nlmsg_free(skb);
		err = -EMSGSIZE;
		goto out;
	}
	skb_put_data(skb, buf, len);
	genlmsg_end(skb, hdr);
	err = genlmsg_multicast(&dst_family, skb, 0, 0, GFP_KERNEL);
	/* Nobody listening any more is not an error. */
	if (err == -ESRCH)
		err = 0;
out:
	mutex_unlock(&dst_mc_lock);
	return err;
}

static u16 dst_set_maxattr(const struct dst_nl_set *set)
{
	u16 max = 0;
	u32 i;

	for (i = 0; i < set->n; i++)
		max = max_t(u16, max, set->attrs[i].id);
	return max;
}

static void dst_free_policies(void)
{
	u32 i;

	for (i = 0; dst_policies && i < dst_npolicies; i++)
		kfree(dst_policies[i]);
	kfree(dst_policies);
	dst_policies = NULL;
	kfree(dst_ops);
	dst_ops = NULL;
}

static int dst_fill_policy(const struct dst_nl_spec *spec, u32 s)
{
	const struct dst_nl_set *set = &spec->sets[s];
	struct nla_policy *pol = dst_policies[s];
	u32 i;

	for (i = 0; i < set->n; i++) {
		const struct dst_nl_attr *a = &set->attrs[i];
		struct nla_policy *p = &pol[a->id];

		switch (a->kind) {
		case DST_NL_U8:
			p->type = NLA_U8;
			p->validation_type = NLA_VALIDATE_RANGE;
			p->min = a->min;
			p->max = a->max;
			break;
		case DST_NL_U32:
			p->type = NLA_U32;
			break;
		case DST_NL_U64:
			p->type = NLA_U64;
			break;
		case DST_NL_STR:
			p->type = NLA_NUL_STRING;
			p->len = a->max;
			break;
		case DST_NL_NESTED:
			if (a->nested_set >= spec->nsets)
				return -EINVAL;
			p->type = NLA_NESTED;
			p->nested_policy = dst_policies[a->nested_set];
			p->len = dst_set_maxattr(&spec->sets[a->nested_set]);
			break;
		default:
			return -EINVAL;
		}
	}
	return 0;
}

int dst_genl_register(const struct dst_nl_spec *spec, void *priv)
{
	u32 i;
	int err;

	dst_policies = kcalloc(spec->nsets, sizeof(*dst_policies), GFP_KERNEL);
	dst_ops = kcalloc(spec->ncmds, sizeof(*dst_ops), GFP_KERNEL);
	if (!dst_policies || !dst_ops) {
		err = -ENOMEM;
		goto fail;
	}
	dst_npolicies = spec->nsets;
	for (i = 0; i < spec->nsets; i++) {
		u16 max = dst_set_maxattr(&spec->sets[i]);

		dst_policies[i] = kcalloc(max + 1, sizeof(struct nla_policy),
					  GFP_KERNEL);
		if (!dst_policies[i]) {
			err = -ENOMEM;
			goto fail;
		}
	}
	for (i = 0; i < spec->nsets; i++) {
		err = dst_fill_policy(spec, i);
		if (err)
			goto fail;
	}
	for (i = 0; i < spec->ncmds; i++) {
		const struct dst_nl_cmd *c = &spec->cmds[i];

		if (c->set >= spec->nsets) {
			err = -EINVAL;
			goto fail;
		}
		dst_ops[i].cmd = c->cmd;
		dst_ops[i].doit = c->doit ? dst_genl_doit : NULL;
		dst_ops[i].dumpit = c->dumpit ? dst_genl_dumpit : NULL;
		dst_ops[i].policy = dst_policies[c->set];
		dst_ops[i].maxattr = dst_set_maxattr(&spec->sets[c->set]);
	}

	memset(&dst_family, 0, sizeof(dst_family));
	strscpy(dst_family.name, spec->name, sizeof(dst_family.name));
	strscpy(dst_mcgrp.name, spec->mcgrp, sizeof(dst_mcgrp.name));
	dst_family.version = spec->version;
	dst_family.module = THIS_MODULE;
	/*
	 * dst serialises its own changes (Registry::admin): a slow command
	 * (a connection attempt, a detach waiting for writes) must hold up
	 * neither dst's status requests nor other genetlink families.
	 */
	dst_family.parallel_ops = true;
	dst_family.ops = dst_ops;
	dst_family.n_ops = spec->ncmds;
	dst_family.mcgrps = &dst_mcgrp;
	dst_family.n_mcgrps = 1;
	dst_priv = priv;
	dst_spec = spec;

	err = genl_register_family(&dst_family);
	if (err)
		goto fail;
	mutex_lock(&dst_mc_lock);
	dst_registered = true;
	mutex_unlock(&dst_mc_lock);
	return 0;
fail:
	dst_free_policies();
	return err;
}

void dst_genl_unregister(void)
{
	mutex_lock(&dst_mc_lock);
	dst_registered = false;
	mutex_unlock(&dst_mc_lock);
	genl_unregister_family(&dst_family);
	dst_free_policies();
	dst_priv = NULL;
	dst_spec = NULL;
}

package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/creditgate/creditgate/ledger"
)

// view is the shared configuration as one admin change reads it: every
// read at the revision of its first, remembered, so the change's
// transaction can compare what it decided on. It is the ledger.Directory
// the ledger's rules consult; a read that fails answers "absent" and sets
// err, which the caller checks before believing any verdict.
type view struct {
	r      *Replica
	ctx    context.Context
	rev    int64 // 0 until the first read
	kvs    map[string]*mvccpb.KeyValue
	maxMod int64 // the largest mod revision read: what a change that writes nothing waits to see applied
	err    error
}

func (r *Replica) newView() *view {
	return &view{r: r, ctx: r.ctx, kvs: map[string]*mvccpb.KeyValue{}}
}

func (v *view) fetch(key string, opts ...clientv3.OpOption) *clientv3.GetResponse {
	if v.err != nil {
		return nil
	}
	if v.rev != 0 {
		opts = append(opts, clientv3.WithRev(v.rev))
	}
	ctx, cancel := context.WithTimeout(v.ctx, v.r.n.cfg.OpTimeout)
	defer cancel()
	resp, err := v.r.n.cli.Get(ctx, key, opts...)
	if err != nil {
		v.err = err
		return nil
	}
	if v.rev == 0 {
		v.rev = resp.Header.Revision
	}
	for _, kv := range resp.Kvs {
		v.maxMod = max(v.maxMod, kv.ModRevision)
	}
	return resp
}

// get reads one key (nil: absent), once per view.
func (v *view) get(key string) *mvccpb.KeyValue {
	if kv, ok := v.kvs[key]; ok {
		return kv
	}
	resp := v.fetch(key)
	if resp == nil {
		return nil
	}
	var kv *mvccpb.KeyValue
	if len(resp.Kvs) == 1 {
		kv = resp.Kvs[0]
	}
	v.kvs[key] = kv
	return kv
}

// decode reads key into out; false when absent or unreadable (err set).
func (v *view) decode(key string, out any) (*mvccpb.KeyValue, bool) {
	kv := v.get(key)
	if kv == nil {
		return nil, false
	}
	if err := json.Unmarshal(kv.Value, out); err != nil {
		if v.err == nil {
			v.err = fmt.Errorf("record %s: %w", key, err)
		}
		return kv, false
	}
	return kv, true
}

func (v *view) LookupOrg(id string) (ledger.Org, bool) {
	var o ledger.Org
	_, ok := v.decode(v.r.k.cfgOrg(id), &o)
	return o, ok
}

func (v *view) LookupTrunk(id string) (ledger.Trunk, bool) {
	var tr ledger.Trunk
	_, ok := v.decode(v.r.k.cfgTrunk(id), &tr)
	return tr, ok
}

func (v *view) NumberUser(e164 string) (string, bool) {
	kv := v.get(v.r.k.number(e164))
	if kv == nil {
		return "", false
	}
	user, _ := numberOwner(kv.Value)
	org, id, ok := strings.Cut(user, "/")
	if !ok {
		return "", false
	}
	var u ledger.User
	if _, ok := v.decode(v.r.k.cfgUser(org, id), &u); !ok || !slices.Contains(u.Numbers, e164) {
		return "", false // a stale entry: the user gave the number up
	}
	return user, true
}

func (v *view) LookupTollFree(number string) (ledger.TollFree, bool) {
	var tf ledger.TollFree
	_, ok := v.decode(v.r.k.cfgTollFree(number), &tf)
	return tf, ok
}

func (v *view) Delivers(trunk string) (ledger.TollFree, bool) {
	prefix := v.r.k.delivers(trunk)
	resp := v.fetch(prefix, clientv3.WithPrefix(), clientv3.WithLimit(1))
	if resp == nil || len(resp.Kvs) == 0 {
		return ledger.TollFree{}, false
	}
	number := strings.TrimPrefix(string(resp.Kvs[0].Key), prefix)
	if tf, ok := v.LookupTollFree(number); ok {
		return tf, true
	}
	return ledger.TollFree{Number: number, Trunk: trunk}, true
}

var _ ledger.Directory = (*view)(nil)

// change runs one admin change: decide reads a fresh view and returns the
// comparisons and operations of its fenced transaction, or a refusal, or
// no operations when there is nothing to write. A transaction whose
// comparisons fail (someone changed what decide read) is decided again on a
// new view, at most maxAttempts times. It returns once the local ledger has
// applied the change (or, for nothing to write, every record decide read).
func (r *Replica) change(what string, decide func(v *view) ([]clientv3.Cmp, []clientv3.Op, error)) error {
	for attempt := 0; attempt < maxAttempts; attempt++ {
		v := r.newView()
		cmps, ops, err := decide(v)
		if errors.Is(v.err, rpctypes.ErrCompacted) {
			continue // etcd compacted the view's revision between two reads: read again
		}
		if v.err != nil {
			return unavailable(what, v.err)
		}
		if err != nil {
			return err
		}
		if len(ops) == 0 {
			if err := r.await(v.maxMod); err != nil {
				return unavailable(what, err)
			}
			return nil
		}
		if len(cmps)+1 > maxTxnOps || len(ops) > maxTxnOps {
			// A bug: every change's bounds (numbers per user) keep it within.
			return fmt.Errorf("cluster config %s: %d comparisons, %d operations: %w", what, len(cmps)+1, len(ops), ErrInvalid)
		}
		ok, rev, err := r.n.commit(r.ctx, cmps, ops)
		if err != nil {
			return unavailable(what, err)
		}
		if ok {
			if err := r.await(rev); err != nil {
				return unavailable(what, err)
			}
			return nil
		}
	}
	return unavailable(what, ErrContention)
}

func modRevIs(key string, kv *mvccpb.KeyValue) clientv3.Cmp {
	return clientv3.Compare(clientv3.ModRevision(key), "=", modRev(kv))
}

// orgExists compares that the org read is still the same org (orgs are
// never deleted; its settings may change meanwhile).
func orgExists(key string, kv *mvccpb.KeyValue) clientv3.Cmp {
	return clientv3.Compare(clientv3.CreateRevision(key), "=", kv.CreateRevision)
}

// orgRecord is what config/org/<id> holds: the org's settings, without the
// money and the local low-balance mark.
func orgRecord(o ledger.Org) string {
	o.Balances = ledger.Balances{}
	o.LowBalanceWarned = ledger.Org{}.LowBalanceWarned
	return encode(o)
}

// CreateOrg adds an org, as ledger.Books.CreateOrg: refused with
// ErrOrgExists when any node created it first (of concurrent creates of one
// id exactly one wins).
func (r *Replica) CreateOrg(o ledger.Org) (ledger.Org, error) {
	o, err := r.local.PrepareOrg(o)
	if err != nil {
		return ledger.Org{}, err
	}
	key := r.k.cfgOrg(o.ID)
	err = r.change("create org", func(v *view) ([]clientv3.Cmp, []clientv3.Op, error) {
		if _, ok := v.LookupOrg(o.ID); ok {
			return nil, nil, fmt.Errorf("%w: %s", ledger.ErrOrgExists, o.ID)
		}
		return []clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(key), "=", 0)},
			[]clientv3.Op{clientv3.OpPut(key, orgRecord(o))}, nil
	})
	if err != nil {
		return ledger.Org{}, err
	}
	return r.local.Org(o.ID)
}

// setOrg replaces one setting of an org: set may refuse.
func (r *Replica) setOrg(what, org string, set func(o *ledger.Org) error) (ledger.Org, error) {
	key := r.k.cfgOrg(org)
	err := r.change(what, func(v *view) ([]clientv3.Cmp, []clientv3.Op, error) {
		o, ok := v.LookupOrg(org)
		if !ok {
			return nil, nil, fmt.Errorf("%w: %s", ledger.ErrUnknownOrg, org)
		}
		if err := set(&o); err != nil {
			return nil, nil, err
		}
		kv := v.get(key)
		rec := orgRecord(o)
		if rec == string(kv.Value) {
			return nil, nil, nil
		}
		return []clientv3.Cmp{modRevIs(key, kv)}, []clientv3.Op{clientv3.OpPut(key, rec)}, nil
	})
	if err != nil {
		return ledger.Org{}, err
	}
	return r.local.Org(org)
}

// SetBlockPremium is ledger.Books.SetBlockPremium for the cluster.
func (r *Replica) SetBlockPremium(org string, block bool) (ledger.Org, error) {
	return r.setOrg("block premium", org, func(o *ledger.Org) error { o.BlockPremium = block; return nil })
}

// SetContacts is ledger.Books.SetContacts for the cluster.
func (r *Replica) SetContacts(org string, c ledger.Contacts) (ledger.Org, error) {
	if err := c.Validate(); err != nil {
		return ledger.Org{}, err
	}
	return r.setOrg("contacts", org, func(o *ledger.Org) error { o.Contacts = c; return nil })
}

// SetFraudGuard is ledger.Books.SetFraudGuard for the cluster.
func (r *Replica) SetFraudGuard(org string, fg ledger.FraudGuard) (ledger.Org, error) {
	if err := ledger.ValidateFraudGuard(fg); err != nil {
		return ledger.Org{}, err
	}
	return r.setOrg("fraud guard", org, func(o *ledger.Org) error { o.FraudGuard = fg; return nil })
}

// SetAutoRecharge is ledger.Books.SetAutoRecharge for the cluster, with one
// difference: it only stores the setting. Whether a purchase starts is the
// cluster's one payer's decision (each node applying it would start one
// each), which this replica does not make.
func (r *Replica) SetAutoRecharge(org string, ar ledger.AutoRecharge) (ledger.AutoRecharge, error) {
	ar, err := r.local.PrepareAutoRecharge(ar)
	if err != nil {
		return ledger.AutoRecharge{}, err
	}
	o, err := r.setOrg("auto-recharge", org, func(o *ledger.Org) error {
		if err := ledger.CheckAutoRechargeFor(*o, ar); err != nil {
			return err
		}
		o.AutoRecharge = ar
		return nil
	})
	if err != nil {
		return ledger.AutoRecharge{}, err
	}
	if ar.Incident != "" && o.Region != o.BillingRegion {
		r.log.Warn("auto-recharge allowed across regions by a support incident", "org", org,
			"region", o.Region, "billing_region", o.BillingRegion, "incident", ar.Incident)
	}
	return o.AutoRecharge, nil
}

// PutUser is ledger.Books.PutUser for the cluster: of two nodes giving one
// number to different users at once, exactly one succeeds (the other gets
// ErrNumberTaken), as each number has one index key both compare.
func (r *Replica) PutUser(u ledger.User) error {
	u, err := ledger.PrepareUser(u)
	if err != nil {
		return err
	}
	orgKey, userKey := r.k.cfgOrg(u.Org), r.k.cfgUser(u.Org, u.ID)
	rec := encode(u)
	return r.change("put user", func(v *view) ([]clientv3.Cmp, []clientv3.Op, error) {
		if err := ledger.CheckPutUser(v, u); err != nil {
			return nil, nil, err
		}
		var old ledger.User
		ukv, _ := v.decode(userKey, &old)
		if v.err != nil {
			return nil, nil, nil
		}
		if ukv != nil && string(ukv.Value) == rec {
			return nil, nil, nil
		}
		cmps := []clientv3.Cmp{orgExists(orgKey, v.get(orgKey)), modRevIs(userKey, ukv)}
		ops := []clientv3.Op{clientv3.OpPut(userKey, rec)}
		for _, n := range u.Numbers {
			if ukv != nil && slices.Contains(old.Numbers, n) {
				continue // its index names this user already
			}
			nk := r.k.number(n)
			cmps = append(cmps, modRevIs(nk, v.get(nk)))
			ops = append(ops, clientv3.OpPut(nk, "u:"+u.Org+"/"+u.ID))
		}
		for _, n := range old.Numbers {
			// Index entries of numbers given up go while the transaction
			// has room; one left behind reads as free (view.NumberUser).
			if !slices.Contains(u.Numbers, n) && len(ops) < maxTxnOps {
				ops = append(ops, clientv3.OpDelete(r.k.number(n)))
			}
		}
		return cmps, ops, nil
	})
}

// DeleteUser is ledger.Books.DeleteUser for the cluster. ErrInUse is
// decided for this node's calls; a call of the user up on another node goes
// on (that node applies the delete anyway, see ledger.Apply).
func (r *Replica) DeleteUser(org, id string) (bool, error) {
	found := false
	userKey := r.k.cfgUser(org, id)
	err := r.change("delete user", func(v *view) ([]clientv3.Cmp, []clientv3.Op, error) {
		found = false
		if _, ok := v.LookupOrg(org); !ok {
			return nil, nil, fmt.Errorf("%w: %s", ledger.ErrUnknownOrg, org)
		}
		var u ledger.User
		ukv, ok := v.decode(userKey, &u)
		if !ok {
			return nil, nil, nil
		}
		if err := r.local.UserBusy(org, id); err != nil {
			return nil, nil, err
		}
		found = true
		ops := []clientv3.Op{clientv3.OpDelete(userKey)}
		for _, n := range u.Numbers {
			ops = append(ops, clientv3.OpDelete(r.k.number(n)))
		}
		return []clientv3.Cmp{modRevIs(userKey, ukv)}, ops, nil
	})
	return found && err == nil, err
}

// PutTollFree is ledger.Books.PutTollFree for the cluster.
func (r *Replica) PutTollFree(tf ledger.TollFree) error {
	if err := ledger.ValidateTollFree(tf); err != nil {
		return err
	}
	orgKey, tfKey, nk := r.k.cfgOrg(tf.Org), r.k.cfgTollFree(tf.Number), r.k.number(tf.Number)
	rec := encode(tf)
	return r.change("put toll-free", func(v *view) ([]clientv3.Cmp, []clientv3.Op, error) {
		if err := ledger.CheckPutTollFree(v, tf); err != nil {
			return nil, nil, err
		}
		var old ledger.TollFree
		tkv, _ := v.decode(tfKey, &old)
		if v.err != nil {
			return nil, nil, nil
		}
		if tkv != nil && string(tkv.Value) == rec {
			return nil, nil, nil
		}
		cmps := []clientv3.Cmp{orgExists(orgKey, v.get(orgKey)), modRevIs(tfKey, tkv), modRevIs(nk, v.get(nk))}
		ops := []clientv3.Op{clientv3.OpPut(tfKey, rec), clientv3.OpPut(nk, "t:"+tf.Org)}
		if tf.Trunk != "" {
			tk := r.k.cfgTrunk(tf.Trunk)
			cmps = append(cmps, modRevIs(tk, v.get(tk)))
			ops = append(ops, clientv3.OpPut(r.k.delivery(tf.Trunk, tf.Number), ""))
		}
		if tkv != nil && old.Trunk != "" && old.Trunk != tf.Trunk {
			ops = append(ops, clientv3.OpDelete(r.k.delivery(old.Trunk, tf.Number)))
		}
		return cmps, ops, nil
	})
}

// DeleteTollFree is ledger.Books.DeleteTollFree for the cluster; ErrInUse
// is decided for this node's calls, as for DeleteUser.
func (r *Replica) DeleteTollFree(org, number string) (bool, error) {
	found := false
	tfKey := r.k.cfgTollFree(number)
	err := r.change("delete toll-free", func(v *view) ([]clientv3.Cmp, []clientv3.Op, error) {
		found = false
		var tf ledger.TollFree
		tkv, ok := v.decode(tfKey, &tf)
		if !ok || tf.Org != org {
			return nil, nil, nil
		}
		if err := r.local.TollFreeBusy(org, number); err != nil {
			return nil, nil, err
		}
		found = true
		ops := []clientv3.Op{clientv3.OpDelete(tfKey), clientv3.OpDelete(r.k.number(number))}
		if tf.Trunk != "" {
			ops = append(ops, clientv3.OpDelete(r.k.delivery(tf.Trunk, number)))
		}
		return []clientv3.Cmp{modRevIs(tfKey, tkv)}, ops, nil
	})
	return found && err == nil, err
}

// PutTrunk is ledger.Books.PutTrunk for the cluster.
func (r *Replica) PutTrunk(tr ledger.Trunk) error {
	if err := ledger.ValidateTrunk(tr); err != nil {
		return err
	}
	key := r.k.cfgTrunk(tr.ID)
	rec := encode(tr)
	return r.change("put trunk", func(v *view) ([]clientv3.Cmp, []clientv3.Op, error) {
		if err := ledger.CheckPutTrunk(v, tr); err != nil {
			return nil, nil, err
		}
		kv := v.get(key)
		if kv != nil && bytes.Equal(kv.Value, []byte(rec)) {
			return nil, nil, nil
		}
		cmps := []clientv3.Cmp{modRevIs(key, kv)}
		if tr.Org != "" {
			ok := r.k.cfgOrg(tr.Org)
			cmps = append(cmps, orgExists(ok, v.get(ok)))
		}
		return cmps, []clientv3.Op{clientv3.OpPut(key, rec)}, nil
	})
}

// DeleteTrunk is ledger.Books.DeleteTrunk for the cluster: ErrInUse while
// it delivers a toll-free number of any node's assigning, decided in the
// same transaction (its deliveries prefix must be empty).
func (r *Replica) DeleteTrunk(id string) (bool, error) {
	found := false
	key := r.k.cfgTrunk(id)
	err := r.change("delete trunk", func(v *view) ([]clientv3.Cmp, []clientv3.Op, error) {
		found = false
		kv := v.get(key)
		if kv == nil {
			return nil, nil, nil
		}
		if err := ledger.CheckDeleteTrunk(v, id); err != nil {
			return nil, nil, err
		}
		found = true
		return []clientv3.Cmp{
				modRevIs(key, kv),
				clientv3.Compare(clientv3.Version(r.k.delivers(id)), "=", 0).WithPrefix(),
			},
			[]clientv3.Op{clientv3.OpDelete(key)}, nil
	})
	return found && err == nil, err
}

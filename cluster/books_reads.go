// What Books answers for the org's cluster-wide reads (the admin API's GET
// /v1/orgs/{org} and …/transactions): the pools as etcd has them, and the
// fundings only etcd has.

package cluster

import (
	"context"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/creditgate/creditgate/ledger"
	"github.com/shopspring/decimal"
)

// OrgNow is Org with the account read from etcd now, for the admin API's
// GET /v1/orgs/{org} (api/cluster_org.go): Org answers from the account as
// this node last read it, which the tick refreshes only for orgs read
// within 10 ticks (and the gateway's reads must not wait for etcd), so an
// org this node has not looked at lately would show an old balance. One
// etcd read per request, off the call path; etcd out of reach, it answers
// as Org does.
func (b *Books) OrgNow(id string) (ledger.Org, error) {
	lo, err := b.local.Org(id)
	if err != nil {
		return lo, err
	}
	accts, err := b.n.ReadAccounts(b.ctx, []string{id})
	b.ops.reads.Add(1)
	if err == nil {
		o := b.org(id)
		b.mu.Lock()
		o.acct, o.known = accts[id], true
		b.mu.Unlock()
	} else {
		b.log.Warn("cluster balance read failed; answering the last one read", "org", id, "error", err)
	}
	return b.cluster(lo, true), nil
}

// Fundings is Node.Fundings of an org this node knows: its money in, which
// no node's ledger has (api.ClusterHistory). etcd out of reach is
// ledger.ErrUnavailable.
func (b *Books) Fundings(org string, after uint64, limit int) ([]ledger.Entry, uint64, error) {
	if _, err := b.local.Org(org); err != nil {
		return nil, 0, err
	}
	es, next, err := b.n.Fundings(b.ctx, org, after, limit)
	if err != nil {
		return nil, 0, fmt.Errorf("%w: %v", ledger.ErrUnavailable, err)
	}
	return es, next, nil
}

// Pools answers the org's pools of the month that contains at the way Org
// answers its balance: what the cluster has used, this node's held.
//
//	Total = etcd's total for the pool (it follows the licenses; the
//	        licensed minutes until the pool's first grant creates it)
//	Used  = etcd's used (every node's minutes as it last reported them,
//	        a dead node's as its reaper settled them) + this node's
//	        minutes not yet reported (its ledger's used − its slice's)
//	Held  = this node's held minutes (the API sums the nodes')
//
// etcd's used is the one figure that counts a dead or unreachable node's
// minutes, and counts each minute once: a sum of the nodes' own used
// would miss a dead node's, and a restarted node's ledger keeps minutes a
// survivor's reap already put in etcd. It lags each other node's use by
// at most a report interval (Config.ReportEvery), as the balance does.
// etcd out of reach is ledger.ErrUnavailable.
func (b *Books) Pools(org string, at time.Time) ([]ledger.Pool, error) {
	ps, err := b.local.Pools(org, at)
	if err != nil || len(ps) == 0 {
		return ps, err
	}
	ops := make([]clientv3.Op, 0, 2*len(ps))
	for _, p := range ps {
		ops = append(ops, clientv3.OpGet(b.n.k.poolAccount(org, p.Plan, p.Month)),
			clientv3.OpGet(b.n.k.poolSlice(b.n.ID(), org, p.Plan, p.Month)))
	}
	rctx, cancel := context.WithTimeout(b.ctx, b.n.cfg.OpTimeout)
	resp, err := b.n.cli.Txn(rctx).Then(ops...).Commit()
	cancel()
	b.ops.reads.Add(1)
	if err != nil {
		return nil, fmt.Errorf("%w: the pools of %s in etcd: %v", ledger.ErrUnavailable, org, err)
	}
	for i := range ps {
		akvs := resp.Responses[2*i].GetResponseRange().Kvs
		skvs := resp.Responses[2*i+1].GetResponseRange().Kvs
		if len(akvs) == 0 {
			continue // no grant yet: every minute used is still this node's, unreported
		}
		a, _, err := decodePool(akvs[0], nil)
		if err != nil {
			return nil, fmt.Errorf("%w: pool %s/%s/%s: %v", ledger.ErrUnavailable, org, ps[i].Plan, ps[i].Month, err)
		}
		reported := 0
		if len(skvs) == 1 {
			_, s, err := decodePool(nil, skvs[0])
			if err != nil {
				return nil, fmt.Errorf("%w: pool %s/%s/%s: %v", ledger.ErrUnavailable, org, ps[i].Plan, ps[i].Month, err)
			}
			reported = s.Used
		}
		ps[i].Total = a.Total
		ps[i].Used = a.Used + max(0, ps[i].Used-reported)
	}
	return ps, nil
}

// AdviceInputs is the local ledger's: this node's calls' spend per day
// (the API adds every node's, api/cluster_org.go).
func (b *Books) AdviceInputs(org string, now time.Time) (ledger.AdviceInputs, error) {
	return b.local.AdviceInputs(org, now)
}

// AdviceFrom computes advice from inputs (ledger.Ledger.AdviceFrom).
func (b *Books) AdviceFrom(in ledger.AdviceInputs, available decimal.Decimal) ledger.Advice {
	return b.local.AdviceFrom(in, available)
}

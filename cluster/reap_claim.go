// The reaper's claim (reaps/<node>/<epoch>) and the reads it decides on:
// which incarnations are dead and left something, who holds the claim,
// taking it (or taking it over), and writing one step of a reap with it.

package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/shopspring/decimal"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/creditgate/creditgate/ledger"
)

// claim is reaps/<node>/<epoch>: who settles that dead incarnation, and
// how far it got, so that a survivor that dies mid-way is taken over by
// another (by compare-and-set on the claim's mod revision, once the
// claimer's own member key is gone). Every step of a reap is a fenced
// transaction that also compares the claim's mod revision and rewrites the
// claim: only the current claimer's steps land, each exactly once.
//
//	Self     the dead node's own next incarnation claimed it (rejoin.go): it
//	         settles from its own disk; if it dies first, a survivor takes
//	         the claim over only while Settling is unset
//	Settling (Self only) the self-claimer is about to settle the
//	         incarnation's money in etcd from its disk (books_restart.go,
//	         markSettling): set in a fenced step before its first etcd
//	         write, so from then on only the node's own next start may
//	         finish the claim (it continues from the disk and from the
//	         idempotent keys the first attempt left)
//	Planned  Calls is the plan: each live call's settlement and end
//	Adopted  the CDRs are in the ledger of AdoptedBy, the claimer that set
//	         it (a successor does not adopt them again; a claimer that
//	         adopted and died before setting it drops its copies when it
//	         starts again, reap_adopt.go)
//	Slices   the slices (org ids) and pools (org/plan/month) settled
//	Settled  all the money settled: the dead node may rejoin (rejoin.go)
//	Done     the legs of every call that was up were sent their BYEs,
//	         records deleted
type claim struct {
	By      string `json:"by"`
	ByEpoch int64  `json:"by_epoch"`
	Self    bool   `json:"self,omitempty"`
	// Settling: see above. Invariant: a claim with Settling set is never
	// taken over by a survivor (takeClaim), and the self-claimer writes
	// nothing of the incarnation's money to etcd before it has set it.
	Settling bool                  `json:"settling,omitempty"`
	Planned  bool                  `json:"planned,omitempty"`
	Calls    map[string]reapedCall `json:"calls,omitempty"`
	Adopted  bool                  `json:"adopted,omitempty"`
	// AdoptedBy is the incarnation ("<node>/<epoch>") whose adopted CDRs
	// are the ones of record (reap_adopt.go).
	AdoptedBy string          `json:"adopted_by,omitempty"`
	Slices    map[string]bool `json:"slices,omitempty"`
	Pools     map[string]bool `json:"pools,omitempty"`
	Returned  decimal.Decimal `json:"returned"`
	Settled   bool            `json:"settled,omitempty"`
	Done      bool            `json:"done,omitempty"`
}

// reapedCall is one call of a dead incarnation as its reaper settled it:
// what it paid in all (its final), when its legs end, and whether it was
// still up (a closed one has its CDR on the dead node's disk already).
type reapedCall struct {
	ledger.Settled
	End  time.Time `json:"end"`
	Live bool      `json:"live,omitempty"`
}

// incarnation is one node id's epoch.
type incarnation struct {
	node  string
	epoch int64
}

// incarnations lists the incarnations (of node, or of every node when
// node is "") that have takeover records, credit or pool slices, or a claim
// not done, sorted.
func (n *Node) incarnations(ctx context.Context, node string) ([]incarnation, error) {
	seen := map[incarnation]bool{}
	sub := ""
	if node != "" {
		sub = node + "/"
	}
	err := n.eachKV(ctx, n.k.takeovers()+sub, true, func(kv *mvccpb.KeyValue) error {
		parts := strings.Split(strings.TrimPrefix(string(kv.Key), n.k.takeovers()), "/")
		if len(parts) >= 2 {
			if e, err := strconv.ParseInt(parts[1], 10, 64); err == nil {
				seen[incarnation{parts[0], e}] = true
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	err = n.eachKV(ctx, n.k.slices()+sub, false, func(kv *mvccpb.KeyValue) error {
		s, err := decodeSlice(kv)
		if err == nil {
			seen[incarnation{s.Node, s.Epoch}] = true
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	err = n.eachKV(ctx, n.k.poolSlices()+sub, false, func(kv *mvccpb.KeyValue) error {
		_, s, err := decodePool(nil, kv)
		if err == nil && s.Epoch > 0 {
			seen[incarnation{s.Node, s.Epoch}] = true
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	err = n.eachKV(ctx, n.k.prefix+"reaps/"+sub, false, func(kv *mvccpb.KeyValue) error {
		var cl claim
		parts := strings.Split(strings.TrimPrefix(string(kv.Key), n.k.prefix+"reaps/"), "/")
		if json.Unmarshal(kv.Value, &cl) == nil && !cl.Done && len(parts) == 2 {
			if e, err := strconv.ParseInt(parts[1], 10, 64); err == nil {
				seen[incarnation{parts[0], e}] = true
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	out := make([]incarnation, 0, len(seen))
	for c := range seen {
		out = append(out, c)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].node != out[j].node {
			return out[i].node < out[j].node
		}
		return out[i].epoch < out[j].epoch
	})
	return out, nil
}

// liveEpochs are the epochs with a member key.
func (n *Node) liveEpochs(ctx context.Context) (map[int64]bool, error) {
	live := map[int64]bool{}
	err := n.eachKV(ctx, n.k.members(), true, func(kv *mvccpb.KeyValue) error {
		if e, err := strconv.ParseInt(strings.TrimPrefix(string(kv.Key), n.k.members()), 10, 64); err == nil {
			live[e] = true
		}
		return nil
	})
	return live, err
}

// readClaim reads a claim and its mod revision (0: none).
func (n *Node) readClaim(ctx context.Context, ck string) (*claim, int64, error) {
	rctx, cancel := context.WithTimeout(ctx, n.cfg.OpTimeout)
	defer cancel()
	resp, err := n.cli.Get(rctx, ck)
	if err != nil {
		return nil, 0, err
	}
	if len(resp.Kvs) == 0 {
		return nil, 0, nil
	}
	var cl claim
	if err := json.Unmarshal(resp.Kvs[0].Value, &cl); err != nil {
		return nil, 0, fmt.Errorf("claim %s: %w", ck, err)
	}
	return &cl, resp.Kvs[0].ModRevision, nil
}

// memberAlive says whether members/<epoch> exists.
func (n *Node) memberAlive(ctx context.Context, epoch int64) (bool, error) {
	rctx, cancel := context.WithTimeout(ctx, n.cfg.OpTimeout)
	defer cancel()
	resp, err := n.cli.Get(rctx, n.k.member(epoch), clientv3.WithCountOnly())
	if err != nil {
		return false, err
	}
	return resp.Count > 0, nil
}

// takeClaim claims the incarnation for this node: a new claim (create if
// absent) or one whose claimer is dead (compare-and-set on its mod
// revision). self: this node's own earlier incarnation (rejoin), claimed
// without waiting for its lease, and a dead self-claim of it taken over;
// otherwise the incarnation's member key must be gone, and a self-claim is
// taken over only once its claimer (the restart) is dead too and had not
// set Settling. It returns the claim as this node holds it and its mod
// revision, or nil when another holds it (or it is done).
func (n *Node) takeClaim(ctx context.Context, c incarnation, self bool) (*claim, int64, *claim, error) {
	ck := n.k.reap(c.node, c.epoch)
	for attempt := 0; attempt < maxAttempts; attempt++ {
		cur, rev, err := n.readClaim(ctx, ck)
		if err != nil {
			return nil, 0, nil, err
		}
		next := &claim{By: n.ID(), ByEpoch: n.Epoch(), Self: self, Returned: decimal.Zero}
		cmps := []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(ck), "=", rev)}
		if !self {
			cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(n.k.member(c.epoch)), "=", 0))
		}
		// A rejoining node may take over a survivor's claim whose claimer
		// died before it adopted a CDR (so before any money moved): in a
		// two-node cluster nobody else would, and ClaimOwn would wait out
		// its limit on every restart. It starts afresh, settling from its
		// own disk. A claim that adopted CDRs is left to survivors (doc.go,
		// edges).
		selfOverDead := self && cur != nil && !cur.Self && !cur.Adopted
		// A survivor takes over a self-claim whose claimer (the node's own
		// restart) died before it finished — only while that restart had
		// not begun to settle money in etcd (Settling unset): otherwise
		// the incarnation's calls would wait for yet another restart,
		// forever if the node never comes back. It reaps from the
		// takeover records as if the claim were new. All that restart
		// can have done is end the calls in its own ledger (restart
		// CDRs), and the node's next start supersedes those by the
		// survivor's (ledger.Options.SettledElsewhere). Once Settling is
		// set the restart may have reclaimed the slices and charged from
		// its disk: a survivor reaping from the records then would bill
		// the calls differently from the money settled (spent ≠ the
		// CDRs' charges), so the claim is left to the node's next start,
		// which continues from its disk.
		overDeadSelf := !self && cur != nil && cur.Self && !cur.Settling
		if cur != nil {
			if cur.Done || (cur.Self != self && !selfOverDead && !overDeadSelf) || (cur.By == n.ID() && cur.ByEpoch == n.Epoch()) {
				if cur.By == n.ID() && cur.ByEpoch == n.Epoch() && !cur.Done {
					return cur, rev, nil, nil // ours already (a retried reap)
				}
				return nil, 0, cur, nil
			}
			alive, err := n.memberAlive(ctx, cur.ByEpoch)
			if err != nil {
				return nil, 0, nil, err
			}
			if alive {
				return nil, 0, cur, nil
			}
			// The claimer died mid-way: take over its progress (a
			// survivor's unadopted plan, taken over by the node itself,
			// has none worth keeping).
			if !selfOverDead && !overDeadSelf {
				next.Planned, next.Calls, next.Adopted, next.AdoptedBy, next.Slices, next.Pools, next.Returned, next.Settled =
					cur.Planned, cur.Calls, cur.Adopted, cur.AdoptedBy, cur.Slices, cur.Pools, cur.Returned, cur.Settled
				// A restart taking over its own dead restart's claim keeps
				// Settling: if it too dies before settling, no survivor
				// may take the claim over.
				next.Settling = cur.Self && self && cur.Settling
			}
			cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(n.k.member(cur.ByEpoch)), "=", 0))
		}
		ok, nrev, err := n.commit(ctx, cmps, []clientv3.Op{clientv3.OpPut(ck, encode(next))})
		if err != nil {
			return nil, 0, nil, err
		}
		if ok {
			return next, nrev, nil, nil
		}
		if !self {
			alive, err := n.memberAlive(ctx, c.epoch)
			if err != nil {
				return nil, 0, nil, err
			}
			if alive {
				return nil, 0, nil, ErrNodeAlive
			}
		}
	}
	return nil, 0, nil, ErrContention
}

// errClaimLost: another survivor took the claim over (this one was taken
// for dead); it finishes the reap.
var errClaimLost = errors.New("reap claim taken over by another node")

// claimStep writes one step of a reap: ops, the claim rewritten as cl, on
// the condition that the claim is still at rev (ours) and cmps hold. ok
// false: a comparison of cmps failed (re-read and decide again).
func (n *Node) claimStep(ctx context.Context, ck string, rev int64, cl *claim, cmps []clientv3.Cmp, ops []clientv3.Op) (int64, bool, error) {
	ok, nrev, err := n.commit(ctx, append([]clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(ck), "=", rev)}, cmps...),
		append(ops, clientv3.OpPut(ck, encode(cl))))
	if err != nil {
		return 0, false, err
	}
	if ok {
		return nrev, true, nil
	}
	cur, crev, err := n.readClaim(ctx, ck)
	if err != nil {
		return 0, false, err
	}
	if cur == nil || crev != rev {
		return 0, false, errClaimLost
	}
	return rev, false, nil
}

// records reads an incarnation's takeover records.
func (n *Node) records(ctx context.Context, c incarnation) (map[string]*Record, error) {
	out := map[string]*Record{}
	err := n.eachKV(ctx, n.k.takeoverOf(c.node, c.epoch), false, func(kv *mvccpb.KeyValue) error {
		var r Record
		if err := json.Unmarshal(kv.Value, &r); err != nil {
			return fmt.Errorf("takeover record %s: %w", kv.Key, err)
		}
		out[r.Call.ID] = &r
		return nil
	})
	return out, err
}

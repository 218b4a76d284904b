package cluster

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/shopspring/decimal"

	"github.com/creditgate/creditgate/ledger"
)

// Moving a single node into a new cluster ("creditgate cluster seed",
// issue 16): its configuration, its API keys, each org's money and the
// month's minute-pool usage go into an empty etcd, and its data directory
// becomes the cluster's first node.
//
// Steps, each landing once however often the seed is run again:
//
//	claim   <prefix>seed = {source, node, done: false}, only if config/ is
//	        empty, no seed key exists and no other node is a member — or,
//	        on a rerun, the key already names this source (a resume, as the
//	        same node id). Every later write compares the key's create
//	        revision (the claim).
//	config  orgs' settings, trunks, users (and their numbers' index keys),
//	        toll-free numbers, API keys (hashes only), the rate deck: puts of
//	        the records as the ledger has them, so writing them again is
//	        harmless (copyConfig).
//	pools   per org, each minute pool of the current month with used
//	        minutes: pools/<org>/<plan>/<month> {total: max(licensed, used),
//	        unallocated: total − used, used} and this node's pool slice
//	        {granted: used, used: used}, created together only if neither
//	        exists; then the ledger's allowance set to used (etcd first,
//	        then the allowance, as pools.go requires). The node adopts the
//	        slice when it serves (a slice is per node, not per incarnation).
//	money   per org: the ledger's balance zeroed by one entry keyed
//	        ledger.SeedSlice/1 (ledger.MoveToCluster), then etcd funded with
//	        exactly that amount under funding key seedFunding. The ledger
//	        goes first: a crash between the two leaves the money in neither
//	        place, never in both, and the rerun reads the amount back from
//	        the entry (ledger.SeedMove) and funds etcd with it; Fund is
//	        idempotent on its key, so a funding that landed lands once.
//	done    the seed key rewritten done: true. Until then CheckSeeded
//	        answers ErrSeedUnfinished and the binary starts no node on the
//	        cluster (a node would see a configuration without its money).
//
// Preconditions, checked before anything is written: no call open in the
// ledger, no org holding money or with a purchase pending, no negative
// balance, no org whose balance came from a cluster (the data directory of
// a cluster node is not a single node's).
//
// What does not move: the history — CDRs, transactions, the audit trail,
// purchases — stays in this ledger, readable on this node (the cluster's
// usage and audit reads merge it with the other nodes'); the outbox's
// undelivered notifications (a cluster node drops its ledger's outbox but
// fraud_guard); the pools of months before the current one (final).

// ErrSeedUnfinished: a seed was claimed in etcd and has not finished; run
// it again from the same data directory to finish it before any node
// starts on the cluster.
var ErrSeedUnfinished = errors.New("cluster: a seed of this cluster has not finished")

// seedFunding is the etcd funding key of an org's seeded money. API keys
// go through fundingKey, whose only '%' is followed by two hex digits, and
// purchases are "%P…": "%S" meets neither.
const seedFunding = "%Sseed"

// seedRecord is the value of <prefix>seed written by SeedCluster (Seed,
// the configuration-only seed, writes a bare node id there).
type seedRecord struct {
	Source string `json:"source"`
	Node   string `json:"node"`
	Done   bool   `json:"done"`
}

// SeedReport is what SeedCluster did.
type SeedReport struct {
	// AlreadyDone: the seed had finished before this run; nothing changed.
	AlreadyDone bool
	// Resumed: an earlier run of the same source had claimed the seed.
	Resumed bool
	// Records is how many configuration records were written (API keys
	// included); Keys how many of them were API keys.
	Records, Keys int
	Orgs          []SeedOrg
	Pools         []SeedPool
}

// SeedOrg is one org's money moved: Amount went from the ledger to an etcd
// funding; Replayed when an earlier run had moved or funded it already.
type SeedOrg struct {
	Org      string
	Amount   decimal.Decimal
	Replayed bool
}

// SeedPool is one minute pool's usage written to etcd.
type SeedPool struct {
	Org, Plan, Month string
	Total, Used      int
}

// SeedCluster moves the single node's ledger local into the cluster n
// joined (an etcd whose shared configuration is empty), as described
// above. source names the data directory being moved, stably across runs
// (the binary keeps a random id in the data directory): a rerun with the
// same source finishes an unfinished seed, exactly once; any other source
// finds ErrConfigExists. n must have joined with the node id the data
// directory will serve as (the pool slices are that node's). The caller
// has the ledger to itself (the data directory locked, no gateway on it).
func SeedCluster(ctx context.Context, n *Node, local *ledger.Ledger, source string) (SeedReport, error) {
	return seedCluster(ctx, n, local, source, nil)
}

// seedCluster is SeedCluster with a test hook: crash, if set, is called
// after each step that wrote something (claim, config, each pool, each
// org's ledger move, each org's funding, done) with the step's name; an
// error from it ends the seed there, as a crash would.
func seedCluster(ctx context.Context, n *Node, local *ledger.Ledger, source string, crash func(step string) error) (SeedReport, error) {
	var rep SeedReport
	if source == "" {
		return rep, fmt.Errorf("cluster seed: empty source: %w", ErrInvalid)
	}
	step := func(name string) error {
		if crash == nil {
			return nil
		}
		return crash(name)
	}
	if err := seedPreflight(local); err != nil {
		return rep, err
	}
	claimRev, done, resumed, err := claimSeed(ctx, n, source)
	if err != nil || done {
		rep.AlreadyDone = done
		return rep, err
	}
	claim := claimCmp(n, claimRev)
	rep.Resumed = resumed
	if err := step("claim"); err != nil {
		return rep, err
	}
	rep.Keys = len(local.Keys())
	if rep.Records, err = copyConfig(ctx, n, local, claim, true); err != nil {
		return rep, err
	}
	if err := step("config"); err != nil {
		return rep, err
	}
	orgs := local.OrgIDs()
	sort.Strings(orgs)
	now := n.clk.Now()
	for _, org := range orgs {
		pools, err := local.Pools(org, now)
		if err != nil {
			return rep, fmt.Errorf("cluster seed: pools of %s: %w", org, err)
		}
		for _, p := range pools {
			if p.Used == 0 {
				continue // the pool's first PoolMove creates it whole
			}
			sp, err := seedPool(ctx, n, local, claimRev, p)
			if err != nil {
				return rep, err
			}
			rep.Pools = append(rep.Pools, sp)
			if err := step("pool " + org + "/" + p.Plan); err != nil {
				return rep, err
			}
		}
	}
	for _, org := range orgs {
		so, err := seedMoney(ctx, n, local, org, step)
		if err != nil {
			return rep, err
		}
		if so.Amount.IsPositive() {
			rep.Orgs = append(rep.Orgs, so)
		}
	}
	rec := seedRecord{Source: source, Node: n.ID(), Done: true}
	ok, _, err := n.commit(ctx, claim, []clientv3.Op{clientv3.OpPut(n.k.seed(), encode(rec))})
	switch {
	case err != nil:
		return rep, fmt.Errorf("cluster seed: mark it done: %w", err)
	case !ok:
		return rep, fmt.Errorf("cluster seed: the seed key changed under it: %w", ErrConfigExists)
	}
	return rep, step("done")
}

// seedPreflight refuses a ledger whose money cannot move as it stands.
func seedPreflight(local *ledger.Ledger) error {
	if calls := local.OpenCalls(); len(calls) > 0 {
		return fmt.Errorf("cluster seed: %d call(s) open in the ledger (first: %s of org %s): %w", len(calls), calls[0].ID, calls[0].Org, ErrInvalid)
	}
	for _, org := range local.OrgIDs() {
		o, err := local.Org(org)
		if err != nil {
			return fmt.Errorf("cluster seed: %w", err)
		}
		if _, moved := local.SeedMove(org); moved {
			continue
		}
		if last, ok := local.LastSliceMove(org); ok {
			return fmt.Errorf("cluster seed: org %s's balance came from a cluster (slice %s): this is a cluster node's data directory, not a single node's: %w", org, last.Slice, ErrInvalid)
		}
		switch {
		case !o.Held.IsZero():
			return fmt.Errorf("cluster seed: org %s holds %s for calls: %w", org, o.Held, ErrInvalid)
		case o.Balance.IsNegative():
			return fmt.Errorf("cluster seed: org %s has a negative balance %s: %w", org, o.Balance, ErrInvalid)
		}
		if id := local.PendingPurchaseOf(org); id != "" {
			return fmt.Errorf("cluster seed: org %s has purchase %s pending: run the single node until it completes or fails: %w", org, id, ErrInvalid)
		}
	}
	return nil
}

// claimCmp is the comparison every write after the claim makes: the seed
// key still the one created at claimRev.
func claimCmp(n *Node, claimRev int64) []clientv3.Cmp {
	return []clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(n.k.seed()), "=", claimRev)}
}

// claimSeed takes the seed for source, or finds it taken by source
// already (resumed; done if it finished). It returns the seed key's
// create revision.
func claimSeed(ctx context.Context, n *Node, source string) (claimRev int64, done, resumed bool, err error) {
	key := n.k.seed()
	for attempt := 0; attempt < maxAttempts; attempt++ {
		kvs, err := n.read(ctx, key)
		if err != nil {
			return 0, false, false, fmt.Errorf("cluster seed: %w", err)
		}
		if kv := kvs[key]; kv != nil {
			var rec seedRecord
			if json.Unmarshal(kv.Value, &rec) != nil || rec.Source != source {
				return 0, false, false, fmt.Errorf("cluster seed: etcd was seeded from another data directory (%q): %w", kv.Value, ErrConfigExists)
			}
			if !rec.Done && rec.Node != n.ID() {
				return 0, false, false, fmt.Errorf("cluster seed: this seed began as node %s, not %s: run it again with --node-id %s: %w", rec.Node, n.ID(), rec.Node, ErrInvalid)
			}
			return kv.CreateRevision, rec.Done, true, nil
		}
		listed, err := noOtherNodes(ctx, n)
		if err != nil {
			return 0, false, false, err
		}
		if seedListed != nil {
			seedListed()
		}
		ok, rev, err := n.commit(ctx,
			[]clientv3.Cmp{
				clientv3.Compare(clientv3.Version(n.k.config()), "=", 0).WithPrefix(),
				clientv3.Compare(clientv3.CreateRevision(key), "=", 0),
				clientv3.Compare(clientv3.CreateRevision(n.k.members()), "<", listed+1).WithPrefix(),
			},
			[]clientv3.Op{clientv3.OpPut(key, encode(seedRecord{Source: source, Node: n.ID()}))})
		if err != nil {
			return 0, false, false, fmt.Errorf("cluster seed: %w", err)
		}
		if ok {
			return rev, false, false, nil
		}
		// The configuration is not empty, a seed key appeared or a node
		// joined since the listing: look again, to say which.
		kvs, err = n.read(ctx, key)
		if err != nil {
			return 0, false, false, fmt.Errorf("cluster seed: %w", err)
		}
		if kvs[key] != nil {
			continue // a seed key appeared: the top of the loop says whose
		}
		cfgCount, err := n.cli.Get(ctx, n.k.config(), clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err != nil {
			return 0, false, false, fmt.Errorf("cluster seed: %w", err)
		}
		if cfgCount.Count > 0 {
			return 0, false, false, fmt.Errorf("cluster seed: etcd already holds a shared configuration: %w", ErrConfigExists)
		}
		// A node joined since the listing: the next listing names it.
	}
	return 0, false, false, fmt.Errorf("cluster seed: claim: %w", ErrContention)
}

// seedListed, when a test sets it, runs between the members' listing and
// the claim: where a node joining races the seed.
var seedListed func()

// noOtherNodes refuses a seed while other nodes are members of the
// cluster: they would apply the configuration as it lands and could spend
// from pools the seed is about to write (nodes that start later are
// refused by CheckSeeded until the seed is done). The seeding node's own
// earlier incarnations (a cut-short seed whose lease has not expired yet)
// do not count: its data directory is locked, so no node of that id runs.
//
// It returns the revision it listed at: the claim compares that no member
// key was created after it, so a node joining between the listing and the
// claim makes the claim fail (and the next listing names it) instead of
// serving the configuration as it lands without its money.
func noOtherNodes(ctx context.Context, n *Node) (int64, error) {
	ctx, cancel := context.WithTimeout(ctx, n.cfg.OpTimeout)
	defer cancel()
	resp, err := n.cli.Get(ctx, n.k.members(), clientv3.WithPrefix(), clientv3.WithLimit(maxPeers))
	if err != nil {
		return 0, fmt.Errorf("cluster seed: list the members: %w", err)
	}
	var others []string
	for _, kv := range resp.Kvs {
		if id := string(kv.Value); id != n.ID() {
			others = append(others, id)
		}
	}
	if len(others) > 0 || resp.More {
		return 0, fmt.Errorf("cluster seed: node(s) %s are running on this cluster: seed it before any node starts (stop them, seed, start them again): %w",
			strings.Join(others, ", "), ErrInvalid)
	}
	return resp.Header.Revision, nil
}

// seedPool writes one pool's month usage as this node's (see above).
func seedPool(ctx context.Context, n *Node, local *ledger.Ledger, claimRev int64, p ledger.Pool) (SeedPool, error) {
	claim := claimCmp(n, claimRev)
	total := max(p.Licensed, p.Used)
	sp := SeedPool{Org: p.Org, Plan: p.Plan, Month: p.Month, Total: total, Used: p.Used}
	if p.Held != 0 {
		return sp, fmt.Errorf("cluster seed: pool %s/%s/%s holds %d minutes: %w", p.Org, p.Plan, p.Month, p.Held, ErrInvalid)
	}
	ak, sk := n.k.poolAccount(p.Org, p.Plan, p.Month), n.k.poolSlice(n.ID(), p.Org, p.Plan, p.Month)
	a := PoolAccount{Total: total, Unallocated: total - p.Used, Used: p.Used}
	s := PoolSlice{Node: n.ID(), Epoch: n.epoch, Org: p.Org, Plan: p.Plan, Month: p.Month, Granted: p.Used, Used: p.Used}
	ok, _, err := n.commit(ctx,
		append([]clientv3.Cmp{
			clientv3.Compare(clientv3.CreateRevision(ak), "=", 0),
			clientv3.Compare(clientv3.CreateRevision(sk), "=", 0),
		}, claim...),
		[]clientv3.Op{clientv3.OpPut(ak, encode(a)), clientv3.OpPut(sk, encode(s))})
	if err != nil {
		return sp, fmt.Errorf("cluster seed: pool %s: %w", ak, err)
	}
	if !ok {
		// An earlier run wrote it (or the claim moved): what etcd has
		// must be this node's usage, untouched since (no node serves
		// before the seed is done).
		kvs, err := n.read(ctx, ak, sk, n.k.seed())
		if err != nil {
			return sp, fmt.Errorf("cluster seed: pool %s: %w", ak, err)
		}
		if kv := kvs[n.k.seed()]; kv == nil || kv.CreateRevision != claimRev {
			return sp, fmt.Errorf("cluster seed: the seed key changed under it: %w", ErrConfigExists)
		}
		got, gs, err := decodePool(kvs[ak], kvs[sk])
		if err != nil {
			return sp, err
		}
		if kvs[ak] == nil || kvs[sk] == nil || gs.Used != p.Used || gs.Granted != p.Used || got.Used != p.Used {
			return sp, fmt.Errorf("cluster seed: pool %s in etcd is %+v with slice %+v, not this ledger's %d used minutes: %w", ak, got, gs, p.Used, ErrInvalid)
		}
	}
	if _, err := local.SetPoolAllowance(p.Org, p.Plan, p.Month, p.Used); err != nil {
		return sp, fmt.Errorf("cluster seed: pool %s/%s/%s allowance: %w", p.Org, p.Plan, p.Month, err)
	}
	return sp, nil
}

// seedMoney moves one org's balance: the ledger's entry first, then the
// etcd funding of the same amount (see above).
func seedMoney(ctx context.Context, n *Node, local *ledger.Ledger, org string, step func(string) error) (SeedOrg, error) {
	so := SeedOrg{Org: org}
	amount, moved := local.SeedMove(org)
	if moved {
		so.Replayed = true
	} else {
		en, err := local.MoveToCluster(org)
		if err != nil {
			return so, fmt.Errorf("cluster seed: org %s: %w", org, err)
		}
		if en.Amount.IsZero() {
			return so, nil // nothing to move
		}
		amount = en.Amount.Neg()
		if err := step("ledger " + org); err != nil {
			return so, err
		}
	}
	so.Amount = amount
	if !amount.IsPositive() {
		return so, nil
	}
	replayed, err := n.FundReplay(ctx, org, amount, seedFunding)
	if err != nil {
		return so, fmt.Errorf("cluster seed: fund org %s with %s in etcd: %w", org, amount, err)
	}
	so.Replayed = so.Replayed && replayed
	return so, step("fund " + org)
}

// CheckSeeded answers ErrSeedUnfinished while a seed of the cluster is
// claimed and not done: a node started then would apply a configuration
// whose money is not in etcd yet. source is the data directory's seed id
// ("" if it has none): the directory a seed moved must serve as the node
// id it was seeded as (the month's used pool minutes are that node's pool
// slices), else ErrSeedNode. No seed, a finished one or one made by Seed
// (configuration only) answer nil.
func CheckSeeded(ctx context.Context, n *Node, source string) error {
	key := n.k.seed()
	kvs, err := n.read(ctx, key)
	if err != nil {
		return fmt.Errorf("cluster seed state: %w", err)
	}
	kv := kvs[key]
	if kv == nil {
		return nil
	}
	var rec seedRecord
	if json.Unmarshal(kv.Value, &rec) != nil {
		return nil
	}
	if !rec.Done {
		return fmt.Errorf("%w: seeded from node %s's data directory; run \"creditgate cluster seed\" on it again to finish", ErrSeedUnfinished, rec.Node)
	}
	if source != "" && rec.Source == source && rec.Node != n.ID() {
		return fmt.Errorf("%w: this data directory was seeded as node %s, not %s: serve it with --node-id %s (cluster.node_id)", ErrSeedNode, rec.Node, n.ID(), rec.Node)
	}
	return nil
}

// ErrSeedNode: the seeded data directory is started as another node id
// than the one it was seeded as.
var ErrSeedNode = errors.New("cluster: the seeded data directory must serve as the node it was seeded as")

// sameDeck tells whether config/deck already points at a deck of csv's
// size and digest (a resumed seed wrote it).
func sameDeck(ctx context.Context, n *Node, csv []byte) (bool, error) {
	kvs, err := n.read(ctx, n.k.cfgDeck())
	if err != nil {
		return false, err
	}
	kv := kvs[n.k.cfgDeck()]
	if kv == nil {
		return false, nil
	}
	var ptr deckPointer
	if err := json.Unmarshal(kv.Value, &ptr); err != nil {
		return false, fmt.Errorf("config/deck: %w", err)
	}
	sum := sha256.Sum256(csv)
	return ptr.Bytes == len(csv) && ptr.SHA256 == hex.EncodeToString(sum[:]), nil
}

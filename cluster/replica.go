package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/creditgate/creditgate/ledger"
)

// The shared configuration's keys, under Config.Prefix, one record each,
// JSON values, so one watch event is one change:
//
//	config/org/<id>               ledger.Org: settings only, balances zero
//	config/user/<org>/<id>        ledger.User
//	config/trunk/<id>             ledger.Trunk
//	config/tollfree/<number>      ledger.TollFree
//	config/deck                   deckPointer: which chunks are the rate deck
//	config/key/<id>               ledger.APIKey: an admin API key, its secret's hash, never the secret (replica_keys.go)
//	index/number/<e164>           who has the number: "u:<org>/<user>" or "t:<org>"
//	index/delivers/<trunk>/<num>  the toll-free numbers a trunk delivers (empty value)
//	deck/<id>/<chunk>             one chunk of a rate deck (raw bytes)
//	seed                          the node that seeded config/ from its ledger (Seed)
//
// Only config/ is watched and applied; index/ exists for the writers'
// compare-and-set (a number has one key every claimant compares, a trunk's
// deliveries one prefix), and deck/ holds the deck's bytes, fetched once
// its pointer flips.
func (k keys) config() string                { return k.prefix + "config/" }
func (k keys) cfgOrg(id string) string       { return k.prefix + "config/org/" + id }
func (k keys) cfgUser(org, id string) string { return k.prefix + "config/user/" + org + "/" + id }
func (k keys) cfgTrunk(id string) string     { return k.prefix + "config/trunk/" + id }
func (k keys) cfgTollFree(n string) string   { return k.prefix + "config/tollfree/" + n }
func (k keys) cfgDeck() string               { return k.prefix + "config/deck" }
func (k keys) number(n string) string        { return k.prefix + "index/number/" + n }
func (k keys) delivers(trunk string) string  { return k.prefix + "index/delivers/" + trunk + "/" }
func (k keys) delivery(trunk, n string) string {
	return k.prefix + "index/delivers/" + trunk + "/" + n
}
func (k keys) deckChunks(id string) string { return k.prefix + "deck/" + id + "/" }
func (k keys) deckChunk(id string, i int) string {
	return fmt.Sprintf("%sdeck/%s/%06d", k.prefix, id, i)
}

// maxTxnOps is etcd's default limit (--max-txn-ops) on the comparisons, and
// separately on the operations, of one transaction.
const maxTxnOps = 128

// The pause between a failed watch or resync and the next resync: first,
// doubling up to max while resyncs fail.
const (
	resyncFirst = 100 * time.Millisecond
	resyncMax   = 5 * time.Second
)

// Replica keeps a node's local ledger holding the cluster's shared
// configuration, and takes the node's admin changes into it (it is the
// SharedConfig a cluster's Books delegates to).
//
// Apply path: NewReplica reads all of config/ at one revision R and makes
// the local ledger hold exactly that (ledger.Apply: creates, updates, and
// deletes what the ledger has and etcd does not — orgs excepted, which are
// never deleted); then one watcher goroutine applies every change from R+1
// on, in revision order, one ledger.Apply per watch response. A compacted
// or cancelled watch, or a failed fetch, is followed by the same full
// resync, then a watch from its revision.
//
// Write path: each admin change is validated by the ledger's own rules
// (ledger/apply.go), decided on the configuration read at one etcd revision
// (ledger.Directory over etcd), and written in one fenced transaction that
// compares the keys the decision rests on (CreateOrg: the org key absent;
// each number claimed: its index key unchanged; DeleteTrunk: its
// deliveries prefix empty; …), decided again on a fresh read when one
// moved. Then it waits until the watcher has applied the write's revision
// to the local ledger (read-your-writes) and answers from the local ledger,
// as ledger.Books documents. Failures to reach etcd, a fenced node, and a
// watcher that does not catch up within Config.OpTimeout wrap
// ledger.ErrUnavailable (the change may or may not have taken effect; its
// retry finds out).
//
// Invariants:
//   - applied only grows; every config/ change at a revision ≤ applied is
//     in the local ledger (resync sets it to the revision it read, each
//     applied watch response to its last event's revision);
//   - the watcher is the only writer of the local ledger's configuration
//     while the replica runs (a cluster node calls no ledger admin method;
//     the ledger's key methods come here through ledger.ShareKeys and
//     write nothing locally);
//   - in etcd, a number is in at most one user's record or one toll-free
//     record, and index/number/<n> names it (a stale index entry whose user
//     no longer lists n counts as free); every toll-free record with a
//     trunk has its index/delivers key and none other exists.
//
// Lock order: mu is a leaf. It is never held across an etcd request or a
// ledger call.
type Replica struct {
	n     *Node
	k     keys
	local *ledger.Ledger
	log   *slog.Logger
	w     clientv3.Watcher

	ctx  context.Context // cancelled by Close: ends the watcher and pending writes
	stop context.CancelFunc
	wg   sync.WaitGroup

	// Signalled (never blocking: buffered 1) when an applied change
	// replaced the deck, or added, changed or deleted a trunk.
	deckChanged, trunksChanged chan struct{}

	mu       sync.Mutex
	applied  int64         // guarded by mu
	advanced chan struct{} // guarded by mu; closed (and replaced) when applied moves
	err      error         // guarded by mu; the local ledger failed: nothing more is applied
	resyncs  int           // guarded by mu; full resyncs after the first
}

// NewReplica makes local hold the shared configuration in etcd under n's
// prefix, and returns once it does; a watcher then keeps it up to date
// until Close.
func NewReplica(ctx context.Context, n *Node, local *ledger.Ledger, log *slog.Logger) (*Replica, error) {
	r := newReplica(n, local, log)
	rev, err := r.resync(ctx)
	if err != nil {
		r.stop()
		r.w.Close()
		return nil, fmt.Errorf("cluster replica %s: first sync: %w", n.ID(), err)
	}
	r.start(rev)
	// API keys are shared records too (replica_keys.go): the ledger's key
	// changes come here from now on.
	local.ShareKeys(r)
	return r, nil
}

// newReplica is a replica that has applied nothing yet and runs no watcher.
func newReplica(n *Node, local *ledger.Ledger, log *slog.Logger) *Replica {
	if log == nil {
		log = slog.Default()
	}
	ctx, stop := context.WithCancel(context.Background())
	return &Replica{n: n, k: n.k, local: local, log: log.With("node", n.ID()), w: clientv3.NewWatcher(n.cli),
		ctx: ctx, stop: stop, deckChanged: make(chan struct{}, 1), trunksChanged: make(chan struct{}, 1), advanced: make(chan struct{})}
}

// start marks everything up to rev applied and starts the watcher from
// rev+1.
func (r *Replica) start(rev int64) {
	r.advance(rev)
	r.wg.Add(1)
	go r.run(rev)
}

// Close stops the watcher and waits for it. Writes still waiting are
// answered ErrUnavailable.
func (r *Replica) Close() error {
	r.stop()
	r.wg.Wait()
	return r.w.Close()
}

// Applied is the last etcd revision the local ledger has applied: every
// configuration change at or below it is in the ledger.
func (r *Replica) Applied() int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.applied
}

// Resyncs counts the full resyncs after the first (compactions, cancelled
// watches, failed fetches): a figure for a metric.
func (r *Replica) Resyncs() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.resyncs
}

// Err is non-nil once the local ledger refused to apply (its disk failed):
// the replica applies nothing more and every write waits in vain.
func (r *Replica) Err() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.err
}

// DeckChanged is signalled whenever an applied change replaced the local
// ledger's rate deck (also one written through this node): the gateway
// then reloads local.Deck(). One signal may stand for several changes.
func (r *Replica) DeckChanged() <-chan struct{} { return r.deckChanged }

// TrunksChanged is signalled whenever an applied change added, replaced or
// deleted a trunk (also one written through this node): the gateway then
// rebuilds its routing from local.Trunks() (Gateway.ReloadTrunks).
func (r *Replica) TrunksChanged() <-chan struct{} { return r.trunksChanged }

// signal tells the watchers of the deck and of the trunks what changes
// applied: the gateway keeps both parsed, outside the ledger.
func (r *Replica) signal(changes []ledger.Change) {
	for _, c := range changes {
		var ch chan struct{}
		switch c.Kind {
		case ledger.ChangeDeck:
			ch = r.deckChanged
		case ledger.ChangeTrunk, ledger.ChangeDeleteTrunk:
			ch = r.trunksChanged
		default:
			continue
		}
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

func (r *Replica) advance(rev int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if rev > r.applied {
		r.applied = rev
		close(r.advanced)
		r.advanced = make(chan struct{})
	}
}

func (r *Replica) fail(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.err == nil {
		r.err = err
		close(r.advanced) // wake the waiters: they see err
		r.advanced = make(chan struct{})
	}
}

// await waits until the local ledger has applied rev, at most OpTimeout.
func (r *Replica) await(rev int64) error {
	ctx, cancel := context.WithTimeout(r.ctx, r.n.cfg.OpTimeout)
	defer cancel()
	for {
		r.mu.Lock()
		applied, ch, err := r.applied, r.advanced, r.err
		r.mu.Unlock()
		switch {
		case applied >= rev:
			return nil
		case err != nil:
			return err
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("%w: revision %d not applied here (at %d): %w", ledger.ErrUnavailable, rev, applied, ctx.Err())
		}
	}
}

// unavailable wraps an error reaching etcd (or ErrFenced) as the books'
// ErrUnavailable, keeping the cause for errors.Is.
func unavailable(what string, err error) error {
	if errors.Is(err, ledger.ErrUnavailable) {
		return fmt.Errorf("cluster config %s: %w", what, err)
	}
	return fmt.Errorf("cluster config %s: %w: %w", what, ledger.ErrUnavailable, err)
}

// numberOwner parses an index/number value.
func numberOwner(v []byte) (user string, tollFreeOrg string) {
	s := string(v)
	switch {
	case strings.HasPrefix(s, "u:"):
		return s[2:], ""
	case strings.HasPrefix(s, "t:"):
		return "", s[2:]
	}
	return "", ""
}

// *Replica is where a cluster node's Books sends its admin changes.
var _ SharedConfig = (*Replica)(nil)

package cluster

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/creditgate/creditgate/ledger"
)

// syncPage is how many keys one read of a full resync takes (all pages at
// one revision); applyBatch how many changes go into one ledger.Apply.
const (
	syncPage   = 1000
	applyBatch = 256
)

// errResync ends a watch that cannot go on (compacted, cancelled): the
// replica resyncs in full.
var errResync = errors.New("cluster replica: watch ended")

// errLocal marks a failure of the local ledger: the replica stops.
type errLocal struct{ err error }

func (e errLocal) Error() string { return "local ledger: " + e.err.Error() }
func (e errLocal) Unwrap() error { return e.err }

// run is the watcher goroutine: watch from rev+1, and after anything that
// ends the watch, resync in full (with a growing pause while it fails) and
// watch again from there. It ends when Close cancels r.ctx, or when the
// local ledger fails.
func (r *Replica) run(rev int64) {
	defer r.wg.Done()
	pause := resyncFirst
	for {
		err := r.watch(rev)
		for r.ctx.Err() == nil {
			var le errLocal
			if errors.As(err, &le) {
				r.log.Error("cluster replica stopped: the local ledger cannot apply the shared configuration", "err", err)
				r.fail(fmt.Errorf("cluster replica: %w", err))
				return
			}
			r.log.Warn("cluster replica resyncing the shared configuration", "err", err, "applied", r.Applied())
			if !r.sleep(pause) {
				return
			}
			pause = min(2*pause, resyncMax)
			var next int64
			if next, err = r.resync(r.ctx); err == nil {
				r.mu.Lock()
				r.resyncs++
				r.mu.Unlock()
				r.advance(next)
				rev, pause = next, resyncFirst
				break
			}
		}
		if r.ctx.Err() != nil {
			return
		}
	}
}

// sleep waits d on the node's clock; false when the replica closed.
func (r *Replica) sleep(d time.Duration) bool {
	done := make(chan struct{})
	t := r.n.clk.AfterFunc(d, func() { close(done) })
	select {
	case <-done:
		return true
	case <-r.ctx.Done():
		t.Stop()
		return false
	}
}

// watch applies every change after rev, one ledger.Apply per watch
// response, until the watch ends.
func (r *Replica) watch(rev int64) error {
	ctx, cancel := context.WithCancel(clientv3.WithRequireLeader(r.ctx))
	defer cancel()
	for wr := range r.w.Watch(ctx, r.k.config(), clientv3.WithPrefix(), clientv3.WithRev(rev+1)) {
		if wr.CompactRevision != 0 {
			return fmt.Errorf("%w: compacted at %d", errResync, wr.CompactRevision)
		}
		if err := wr.Err(); err != nil {
			return fmt.Errorf("%w: %w", errResync, err)
		}
		if len(wr.Events) == 0 {
			continue
		}
		changes := make([]ledger.Change, 0, len(wr.Events))
		for _, ev := range wr.Events {
			c, ok, err := r.changeOf(ev)
			if err != nil {
				return err
			}
			if ok {
				changes = append(changes, c)
			}
		}
		if err := r.local.Apply(changes...); err != nil {
			return errLocal{err}
		}
		r.advance(wr.Events[len(wr.Events)-1].Kv.ModRevision)
		r.signal(changes)
	}
	if r.ctx.Err() != nil {
		return r.ctx.Err()
	}
	return fmt.Errorf("%w: watch channel closed", errResync)
}

// changeOf turns one watch event into the change the ledger applies; false
// for events that change nothing here (an unknown key, an unreadable
// record: logged, as resyncing would not read it better).
func (r *Replica) changeOf(ev *clientv3.Event) (ledger.Change, bool, error) {
	rest := strings.TrimPrefix(string(ev.Kv.Key), r.k.config())
	kind, id, _ := strings.Cut(rest, "/")
	del := ev.Type == mvccpb.DELETE
	var c ledger.Change
	var rec any
	switch {
	case kind == "org" && !del:
		c.Kind, rec = ledger.ChangeOrg, &c.Org
	case kind == "org":
		r.log.Warn("an org's shared record was deleted; orgs are never deleted, the local one stays", "org", id)
		return c, false, nil
	case kind == "user" && !del:
		c.Kind, rec = ledger.ChangeUser, &c.User
	case kind == "user":
		org, user, _ := strings.Cut(id, "/")
		c.Kind, c.User = ledger.ChangeDeleteUser, ledger.User{Org: org, ID: user}
	case kind == "trunk" && !del:
		c.Kind, rec = ledger.ChangeTrunk, &c.Trunk
	case kind == "trunk":
		c.Kind, c.Trunk = ledger.ChangeDeleteTrunk, ledger.Trunk{ID: id}
	case kind == "tollfree" && !del:
		c.Kind, rec = ledger.ChangeTollFree, &c.TollFree
	case kind == "tollfree":
		c.Kind, c.TollFree = ledger.ChangeDeleteTollFree, ledger.TollFree{Number: id}
	case kind == "key" && !del:
		c.Kind, rec = ledger.ChangeKey, &c.Key
	case kind == "key":
		r.log.Warn("an API key's shared record was deleted; keys are never deleted, the local one stays", "key_id", id)
		return c, false, nil
	case rest == "deck" && del:
		c.Kind = ledger.ChangeDeck
	case rest == "deck":
		var ptr deckPointer
		if err := json.Unmarshal(ev.Kv.Value, &ptr); err != nil {
			r.log.Error("shared rate deck pointer unreadable; deck not applied", "err", err)
			return c, false, nil
		}
		b, err := r.fetchDeck(r.ctx, ptr, ev.Kv.ModRevision)
		if err != nil {
			return c, false, err
		}
		c.Kind, c.Deck = ledger.ChangeDeck, b
	default:
		r.log.Warn("unknown key in the shared configuration, ignored", "key", string(ev.Kv.Key))
		return c, false, nil
	}
	if rec != nil {
		if err := json.Unmarshal(ev.Kv.Value, rec); err != nil {
			r.log.Error("shared configuration record unreadable, not applied", "key", string(ev.Kv.Key), "err", err)
			return c, false, nil
		}
	}
	return c, true, nil
}

// snapshot is config/ read at one revision.
type snapshot struct {
	rev      int64
	orgs     map[string]ledger.Org
	users    map[string]ledger.User // "org/id"
	trunks   map[string]ledger.Trunk
	tollFree map[string]ledger.TollFree
	apiKeys  map[string]ledger.APIKey
}

// readAll reads config/ in pages, all at the revision of the first.
func (r *Replica) readAll(ctx context.Context) (*snapshot, error) {
	s := &snapshot{orgs: map[string]ledger.Org{}, users: map[string]ledger.User{},
		trunks: map[string]ledger.Trunk{}, tollFree: map[string]ledger.TollFree{}, apiKeys: map[string]ledger.APIKey{}}
	prefix := r.k.config()
	end := clientv3.GetPrefixRangeEnd(prefix)
	from := prefix
	for {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(syncPage)}
		if s.rev != 0 {
			opts = append(opts, clientv3.WithRev(s.rev))
		}
		gctx, cancel := context.WithTimeout(ctx, r.n.cfg.OpTimeout)
		resp, err := r.n.cli.Get(gctx, from, opts...)
		cancel()
		if err != nil {
			return nil, fmt.Errorf("read shared configuration: %w", err)
		}
		if s.rev == 0 {
			s.rev = resp.Header.Revision
		}
		for _, kv := range resp.Kvs {
			c, ok, err := r.changeOfRecord(kv)
			if err != nil {
				return nil, err
			}
			if !ok {
				continue
			}
			switch c.Kind {
			case ledger.ChangeOrg:
				s.orgs[c.Org.ID] = c.Org
			case ledger.ChangeUser:
				s.users[c.User.Org+"/"+c.User.ID] = c.User
			case ledger.ChangeTrunk:
				s.trunks[c.Trunk.ID] = c.Trunk
			case ledger.ChangeTollFree:
				s.tollFree[c.TollFree.Number] = c.TollFree
			case ledger.ChangeKey:
				s.apiKeys[c.Key.ID] = c.Key
			}
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return s, nil
		}
		from = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}

// changeOfRecord is changeOf for a key read whole (no event), with the
// deck's pointer read but its chunks not fetched.
func (r *Replica) changeOfRecord(kv *mvccpb.KeyValue) (ledger.Change, bool, error) {
	if string(kv.Key) == r.k.cfgDeck() {
		return ledger.Change{}, false, nil
	}
	return r.changeOf(&clientv3.Event{Type: mvccpb.PUT, Kv: kv})
}

// resync makes the local ledger hold exactly config/ as etcd has it at one
// revision, which it returns: records it lacks or holds otherwise are
// applied, records etcd lacks deleted (orgs excepted). Records equal to
// the local ones are not rewritten, so a restart after a short absence
// costs a read, not a rewrite.
func (r *Replica) resync(ctx context.Context) (int64, error) {
	s, err := r.readAll(ctx)
	if err != nil {
		return 0, err
	}
	gctx, cancel := context.WithTimeout(ctx, r.n.cfg.OpTimeout)
	dresp, err := r.n.cli.Get(gctx, r.k.cfgDeck(), clientv3.WithRev(s.rev))
	cancel()
	if err != nil {
		return 0, fmt.Errorf("read shared rate deck pointer: %w", err)
	}
	if len(s.orgs)+len(s.users)+len(s.trunks)+len(s.tollFree)+len(dresp.Kvs) == 0 &&
		len(r.local.OrgIDs())+len(r.local.UsersAll())+len(r.local.Trunks())+len(r.local.TollFreeAll()) > 0 {
		// Applying nothing would delete everything this ledger holds: a
		// single-node ledger pointed at a new cluster, or an etcd wiped.
		return 0, fmt.Errorf("%w (seed etcd from it with cluster.Seed, or start on an empty ledger)", ErrUnseeded)
	}
	var changes []ledger.Change
	// Deletions first: a number etcd moved from a user deleted here to
	// another is then free when the other is applied (Apply would take it
	// anyway, but needlessly rewrite the deleted one first).
	for _, u := range r.local.UsersAll() {
		if _, ok := s.users[u.Org+"/"+u.ID]; !ok {
			changes = append(changes, ledger.Change{Kind: ledger.ChangeDeleteUser, User: u})
		}
	}
	for _, tf := range r.local.TollFreeAll() {
		if _, ok := s.tollFree[tf.Number]; !ok {
			changes = append(changes, ledger.Change{Kind: ledger.ChangeDeleteTollFree, TollFree: tf})
		}
	}
	for _, tr := range r.local.Trunks() {
		if _, ok := s.trunks[tr.ID]; !ok {
			changes = append(changes, ledger.Change{Kind: ledger.ChangeDeleteTrunk, Trunk: tr})
		}
	}
	for _, id := range sortedKeys(s.orgs) {
		o := s.orgs[id]
		if cur, err := r.local.Org(id); err != nil || orgRecord(cur) != orgRecord(withSuspension(o, cur)) {
			changes = append(changes, ledger.Change{Kind: ledger.ChangeOrg, Org: o})
		}
	}
	trunks := map[string]ledger.Trunk{}
	for _, tr := range r.local.Trunks() {
		trunks[tr.ID] = tr
	}
	for _, id := range sortedKeys(s.trunks) {
		tr := s.trunks[id]
		if cur, ok := trunks[id]; !ok || encode(cur) != encode(tr) {
			changes = append(changes, ledger.Change{Kind: ledger.ChangeTrunk, Trunk: tr})
		}
	}
	for _, key := range sortedKeys(s.users) {
		u := s.users[key]
		if cur, ok := r.local.User(u.Org, u.ID); !ok || encode(cur) != encode(u) {
			changes = append(changes, ledger.Change{Kind: ledger.ChangeUser, User: u})
		}
	}
	for _, n := range sortedKeys(s.tollFree) {
		tf := s.tollFree[n]
		if cur, ok := r.local.TollFreeOwner(n); !ok || cur != tf {
			changes = append(changes, ledger.Change{Kind: ledger.ChangeTollFree, TollFree: tf})
		}
	}
	// API keys: applied when the local one differs. A key this ledger
	// has and etcd does not (made before the node joined a cluster) is
	// left alone: it goes on working on this node only.
	for _, id := range sortedKeys(s.apiKeys) {
		k := s.apiKeys[id]
		if cur, ok := r.local.Key(id); !ok || encode(cur) != encode(k) {
			changes = append(changes, ledger.Change{Kind: ledger.ChangeKey, Key: k})
		}
	}
	local := r.local.Deck()
	switch {
	case len(dresp.Kvs) == 0 && local != nil:
		r.log.Warn("the shared configuration has no rate deck: removing this node's stored one")
		changes = append(changes, ledger.Change{Kind: ledger.ChangeDeck})
	case len(dresp.Kvs) == 1:
		var ptr deckPointer
		if err := json.Unmarshal(dresp.Kvs[0].Value, &ptr); err != nil {
			r.log.Error("shared rate deck pointer unreadable; deck not applied", "err", err)
			break
		}
		sum := sha256.Sum256(local)
		if local != nil && len(local) == ptr.Bytes && hex.EncodeToString(sum[:]) == ptr.SHA256 {
			break
		}
		b, err := r.fetchDeck(ctx, ptr, s.rev)
		if err != nil {
			return 0, err
		}
		if !bytes.Equal(b, local) {
			changes = append(changes, ledger.Change{Kind: ledger.ChangeDeck, Deck: b})
		}
	}
	for rest := changes; len(rest) > 0; {
		n := min(applyBatch, len(rest))
		if err := r.local.Apply(rest[:n]...); err != nil {
			return 0, errLocal{err}
		}
		rest = rest[n:]
	}
	r.signal(changes)
	return s.rev, nil
}

// withSuspension is o as the local ledger would hold it once applied: a
// setting with the UpdatedAt it holds keeps its local suspension.
func withSuspension(o, cur ledger.Org) ledger.Org {
	if o.AutoRecharge.UpdatedAt.Equal(cur.AutoRecharge.UpdatedAt) {
		o.AutoRecharge.Suspended = cur.AutoRecharge.Suspended
	}
	return o
}

// sortedKeys lists a map's keys in order, so a resync applies the same
// changes in the same order on every node.
func sortedKeys[V any](m map[string]V) []string {
	return slices.Sorted(maps.Keys(m))
}

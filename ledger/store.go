package ledger

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/bloom"
	"github.com/cockroachdb/pebble/v2/vfs"
)

// The ledger keeps its state in Pebble as records, one key per object, each
// rewritten whole by the operation that changes it. Open reads the live
// objects back (orgs, users, trunks, calls up, this month's pools), so start
// time depends on what is live, not on history; CDRs and transactions stay on
// disk and are read by range.
//
//	m/seq                      last operation's sequence number
//	o/{org}                    Org, as created
//	b/{org}                    its Balances, rewritten by every movement
//	u/{org}/{user}             User
//	t/{trunk}                  Trunk
//	d                          the uploaded rate deck (CSV)
//	k/{org}/{key}              funding idempotency key → its Entry
//	a/{call}                   Call still up, as authorized
//	s/{call}                   its CallState, rewritten at every increment
//	p/{org}/{plan}/{YYYY-MM}   Pool
//	x/{org}/{seq:8}            Entry (transactions, in order)
//	r/{org}/{start:8}/{call}   CDR, by start time
//	z/{call}                   → the CDR's key, so a retried close finds it
//	g/{call}                   the SIP dialogs of an answered call, until its BYEs are done
//	q/{purchase}               Purchase, auto-recharge or one-time (pending ones, and one-time ones' keys, are loaded)
//	n/{seq:8}                  Notification in the outbox, until delivered
//	y/{key}                    admin API key (keys.go)
//	j/{seq:8}                  audit entry, by the sequence number of its operation (audit.go)
//	c/{org}                    the org's last cluster slice movement (slices.go)
var (
	keySeq  = []byte("m/seq")
	keyDeck = []byte("d")
)

func keyOrg(org string) []byte          { return []byte("o/" + org) }
func keyBalances(org string) []byte     { return []byte("b/" + org) }
func keyCallState(id string) []byte     { return []byte("s/" + id) }
func keyUser(org, user string) []byte   { return []byte("u/" + org + "/" + user) }
func keyTrunk(id string) []byte         { return []byte("t/" + id) }
func keyTollFree(number string) []byte  { return []byte("f/" + number) }
func keyFunding(org, key string) []byte { return []byte("k/" + org + "/" + key) }
func keyCall(id string) []byte          { return []byte("a/" + id) }
func keyEnded(id string) []byte         { return []byte("z/" + id) }
func keyDialog(id string) []byte        { return []byte("g/" + id) }
func keyPool(p *Pool) []byte            { return []byte("p/" + p.Org + "/" + p.Plan + "/" + p.Month) }
func keyEntries(org string) []byte      { return []byte("x/" + org + "/") }
func keyCDRs(org string) []byte         { return []byte("r/" + org + "/") }
func keyEntry(org string, seq uint64) []byte {
	return binary.BigEndian.AppendUint64(keyEntries(org), seq)
}

// keyCDR files a CDR by its call's start. OpenCall refuses a start without
// a key; a call opened before that check, on a host whose clock read a
// time outside the keys' range, is filed at the nearer end of it — first
// or last, never wrapped into the middle.
func keyCDR(org string, start time.Time, call string) []byte {
	ts, err := timeKey(start)
	if err != nil {
		ts = 0
		if start.After(TimeMax) {
			ts, _ = timeKey(TimeMax)
		}
	}
	k := appendTimeKey(keyCDRs(org), ts)
	return append(append(k, '/'), call...)
}

// upperBound is the first key after every key starting with prefix.
func upperBound(prefix []byte) []byte {
	end := append([]byte(nil), prefix...)
	for i := len(end) - 1; i >= 0; i-- {
		if end[i] < 0xff {
			end[i]++
			return end[:i+1]
		}
	}
	return nil
}

// write is one key an operation sets or deletes. v is a snapshot (a value,
// never a pointer into live state) encoded into val after the ledger's lock
// is released; val set directly is raw bytes; neither is a delete.
type write struct {
	key, val []byte
	v        any
}

// encoding makes sure an operation's records are encoded exactly once: by
// its caller right after it releases the ledger's lock (so callers encode in
// parallel), or by the committer if the batch is due first — with dozens of
// goroutines on two cores the caller may not be scheduled again for a while,
// and a batch must not wait for it.
type encoding struct {
	claimed atomic.Bool
	done    chan struct{}
}

func newEncoding() *encoding { return &encoding{done: make(chan struct{})} }

func (e *encoding) do(ws []write) {
	if e.claimed.CompareAndSwap(false, true) {
		encode(ws)
		close(e.done)
		return
	}
	<-e.done
}

// encode fills in val for every snapshot.
func encode(ws []write) {
	for i := range ws {
		if ws[i].v == nil {
			continue
		}
		b, err := marshalRecord(ws[i].v)
		if err != nil {
			// Every record is a plain struct we built; failing here is a bug.
			panic(fmt.Sprintf("ledger: encode %s: %v", ws[i].key, err))
		}
		ws[i].val, ws[i].v = b, nil
	}
}

// txn collects what one operation writes. Operations check everything first
// and only then change memory and record writes, so a refused operation
// writes nothing.
type txn struct {
	seq  uint64 // the operation's number; entries take seq, seq+1, …
	last uint64 // the last number taken
	at   time.Time
	ws   []write
	// after is reported to the caller once the writes are durable: the
	// operation applied, but only in part (a step that debited the increment
	// used and could not hold the next one).
	after error
	// result is the increment the operation held or found, for tracing.
	result Increment
	// wakePayer and wakeOutbox ask for the payer and the notification
	// sender to look again once the operation is durable.
	wakePayer, wakeOutbox bool
	// unsynced: the caller takes the operation as done once it is queued
	// for the disk (Call.Unsynced); it must not wake anyone.
	unsynced bool
}

// put records v as key's new value. v must be a value: it is encoded later,
// outside the lock, when live state may have moved on. A key written twice
// in one operation (the org by a commit and then a hold) keeps the last.
func (t *txn) put(key []byte, v any) { t.set(write{key: key, v: v}) }

// raw records bytes as key's new value.
func (t *txn) raw(key, val []byte) { t.set(write{key: key, val: val}) }

func (t *txn) set(w write) {
	for i := range t.ws {
		if bytes.Equal(t.ws[i].key, w.key) {
			t.ws[i] = w
			return
		}
	}
	t.ws = append(t.ws, w)
}

// entrySeq numbers one balance movement. An operation may move several
// balances (the restart settles every call in one operation), and each
// movement needs its own key in the transaction list.
func (t *txn) entrySeq() uint64 {
	if t.last < t.seq {
		t.last = t.seq
	} else {
		t.last++
	}
	return t.last
}

func (t *txn) del(key []byte) { t.set(write{key: key}) }

// pending is an operation applied in memory and waiting for its synced
// commit. An operation with no writes is a barrier: it is acknowledged once
// everything queued before it is durable (retries of applied operations).
type pending struct {
	seq  uint64
	ws   []write
	enc  *encoding
	done chan error
}

// committer group-commits: every operation queued while earlier ones are
// being written goes into the next batch, so N concurrent callers cost about
// one fsync, not N, and operations reach the disk in the order they were
// applied in memory.
//
// It is a two-stage pipeline. The committer goroutine hands each batch to
// Pebble with ApplyNoSyncWait, which puts it in the WAL in order and returns
// without waiting for the fsync; the waiter goroutine waits for each batch's
// sync, in the same order, and only then acknowledges its operations. So the
// next batch is written while the previous one syncs — what Pebble's own
// commit pipeline does for concurrent writers — and the order that makes the
// records consistent (a batch's records build on every earlier batch's) is
// still the one the ledger applied. An operation with no writes (a barrier)
// travels the same way, so it is acknowledged only once everything before it
// is durable.
//
// Locks: mu guards queue and nothing else. enqueue takes it while its caller
// holds Ledger.mu (Ledger.mu before committer.mu); the committer goroutine
// takes it only to swap the queue out, and neither it nor the waiter holds
// any lock while Pebble writes the WAL or syncs. failed is atomic, read by
// every operation without mu.
type committer struct {
	db      *pebble.DB
	observe func(time.Duration)

	mu     sync.Mutex
	queue  []pending
	wake   chan struct{}
	failed atomic.Pointer[error] // set once; read on every operation without a lock

	flights chan flight
	stop    chan struct{}
	done    chan struct{}
}

// flight is one batch on its way to disk.
type flight struct {
	b     *pebble.Batch // nil when the batch had nothing to write
	q     []pending
	start time.Time
	err   error
}

// maxFlights bounds how many batches may wait for their sync at once;
// beyond it the committer waits, which slows callers instead of growing
// memory.
const maxFlights = 16

func newCommitter(db *pebble.DB, observe func(time.Duration)) *committer {
	c := &committer{db: db, observe: observe, wake: make(chan struct{}, 1), flights: make(chan flight, maxFlights),
		stop: make(chan struct{}), done: make(chan struct{})}
	waited := make(chan struct{})
	go func() {
		defer close(waited)
		c.waitSyncs()
	}()
	go func() {
		defer close(c.done)
		c.run()
		close(c.flights)
		<-waited
	}()
	return c
}

// enqueue must be called in the order operations were applied; the ledger
// calls it while holding its own lock, which gives that order.
//
// ws is encoded after the caller releases its lock, by the caller or by the
// committer, whichever gets to it first (see encoding).
func (c *committer) enqueue(seq uint64, ws []write, enc *encoding) chan error {
	done := make(chan error, 1)
	if err := c.err(); err != nil {
		done <- err
		return done
	}
	c.mu.Lock()
	c.queue = append(c.queue, pending{seq: seq, ws: ws, enc: enc, done: done})
	c.mu.Unlock()
	select {
	case c.wake <- struct{}{}:
	default:
	}
	return done
}

func (c *committer) run() {
	for {
		select {
		case <-c.wake:
		case <-c.stop:
			c.flush() // whatever was queued before Close is still made durable
			return
		}
		c.flush()
	}
}

func (c *committer) flush() {
	c.mu.Lock()
	q := c.queue
	c.queue = nil
	c.mu.Unlock()
	if len(q) == 0 {
		return
	}
	f := flight{q: q, start: time.Now()}
	b := c.db.NewBatch()
	var last uint64
	for _, p := range q {
		p.enc.do(p.ws)
		for _, w := range p.ws {
			if w.val == nil {
				f.err = b.Delete(w.key, nil)
			} else {
				f.err = b.Set(w.key, w.val, nil)
			}
			if f.err != nil {
				break
			}
		}
		last = max(last, p.seq)
	}
	if f.err == nil && last > 0 {
		f.err = b.Set(keySeq, binary.BigEndian.AppendUint64(nil, last), nil)
	}
	switch {
	case f.err != nil || b.Empty():
		_ = b.Close()
	default:
		// EXPERIMENTAL in Pebble, and exactly what it exists for: keep the
		// WAL busy while earlier batches sync.
		if f.err = c.db.ApplyNoSyncWait(b, pebble.Sync); f.err != nil {
			_ = b.Close()
		} else {
			f.b = b
		}
	}
	if f.err != nil {
		c.fail(f.err)
	}
	c.flights <- f
}

// waitSyncs acknowledges batches in order once each is durable.
func (c *committer) waitSyncs() {
	for f := range c.flights {
		err := f.err
		if f.b != nil {
			err = f.b.SyncWait()
			_ = f.b.Close()
			if c.observe != nil {
				c.observe(time.Since(f.start))
			}
		}
		if err != nil {
			c.fail(err)
		}
		// Once one batch failed, no later one is acknowledged either: it
		// may have reached the memtable, but the ledger refuses to go on.
		err = c.err()
		for _, p := range f.q {
			p.done <- err
		}
	}
}

// fail puts the ledger in fail-closed mode: the in-memory state now holds
// changes the disk may not, so everything is refused from here on until a
// restart rebuilds memory from what is durable.
func (c *committer) fail(err error) {
	failed := fmt.Errorf("%w: commit: %v", ErrUnavailable, err)
	c.failed.CompareAndSwap(nil, &failed)
}

func (c *committer) close() {
	close(c.stop)
	<-c.done
}

func (c *committer) err() error {
	if p := c.failed.Load(); p != nil {
		return *p
	}
	return nil
}

func openPebble(dir string, fs vfs.FS) (*pebble.DB, error) {
	opts := &pebble.Options{FS: fs}
	opts.Logger = quietLogger{}
	// Calls churn records (a/, s/, g/ written and deleted within seconds)
	// while CDRs and entries only grow: a large memtable lets most of the
	// churn cancel out in memory instead of being flushed and compacted,
	// and a roomy L0 keeps a compaction that lags behind on a busy 2-core
	// host from stalling writes, which would stall every call's setup.
	opts.MemTableSize = 64 << 20
	opts.MemTableStopWritesThreshold = 4
	opts.L0CompactionThreshold = 4
	opts.L0StopWritesThreshold = 64
	// OpenCall checks a new call id against ended calls on disk: nearly
	// always a miss, which a Bloom filter answers without reading blocks.
	for i := range opts.Levels {
		opts.Levels[i].FilterPolicy = bloom.FilterPolicy(10)
	}
	return pebble.Open(dir, opts)
}

// quietLogger keeps Pebble's informational chatter out of the gateway's
// structured log; fatal errors still stop the process.
type quietLogger struct{}

func (quietLogger) Infof(string, ...any)  {}
func (quietLogger) Errorf(string, ...any) {}
func (quietLogger) Fatalf(format string, args ...any) {
	panic(fmt.Sprintf("pebble: "+format, args...))
}

// scan calls fn with every record under prefix, decoded into a fresh T.
func scan[T any](db pebble.Reader, prefix []byte, fn func(key []byte, v *T) error) error {
	it, err := db.NewIter(&pebble.IterOptions{LowerBound: prefix, UpperBound: upperBound(prefix)})
	if err != nil {
		return err
	}
	defer it.Close()
	for it.First(); it.Valid(); it.Next() {
		v := new(T)
		if err := decodeRecord(it.Key(), it.Value(), v); err != nil {
			return err
		}
		if err := fn(it.Key(), v); err != nil {
			return err
		}
	}
	return it.Error()
}

// scanOnto decodes every record under prefix onto the owner named by the
// rest of its key (an org's balances, a call's state) with set; a record
// whose owner is not in owners is skipped.
func scanOnto[T, O any](db pebble.Reader, prefix []byte, owners map[string]O, set func(O, *T)) error {
	return scan(db, prefix, func(k []byte, v *T) error {
		if o, ok := owners[string(k[len(prefix):])]; ok {
			set(o, v)
		}
		return nil
	})
}

// get reads a copy of key's value; found is false when the key is absent.
func get(db *pebble.DB, key []byte) (val []byte, found bool, err error) {
	v, closer, err := db.Get(key)
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	defer closer.Close()
	return bytes.Clone(v), true, nil
}

// getRecord reads and decodes key into v.
func getRecord(db *pebble.DB, key []byte, v any) (found bool, err error) {
	b, found, err := get(db, key)
	if !found || err != nil {
		return found, err
	}
	return true, decodeRecord(key, b, v)
}

func decodeRecord(key, val []byte, v any) error {
	if err := json.Unmarshal(val, v); err != nil {
		return fmt.Errorf("decode %q: %w", key, err)
	}
	return nil
}

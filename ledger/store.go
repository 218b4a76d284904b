package ledger

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
)

// The ledger keeps its state in Pebble as records, one key per object, each
// rewritten whole by the operation that changes it. Open reads the live
// objects back (orgs, users, trunks, calls up, this month's pools), so start
// time depends on what is live, not on history; CDRs and transactions stay on
// disk and are read by range.
//
//	m/seq                      last operation's sequence number
//	o/{org}                    Org
//	u/{org}/{user}             User
//	t/{trunk}                  Trunk
//	d                          the uploaded rate deck (CSV)
//	k/{org}/{key}              funding idempotency key → its Entry
//	a/{call}                   Call still up
//	p/{org}/{plan}/{YYYY-MM}   Pool
//	x/{org}/{seq:8}            Entry (transactions, in order)
//	r/{org}/{start:8}/{call}   CDR, by start time
//	z/{call}                   → the CDR's key, so a retried close finds it
var (
	keySeq  = []byte("m/seq")
	keyDeck = []byte("d")
)

func keyOrg(org string) []byte          { return []byte("o/" + org) }
func keyUser(org, user string) []byte   { return []byte("u/" + org + "/" + user) }
func keyTrunk(id string) []byte         { return []byte("t/" + id) }
func keyFunding(org, key string) []byte { return []byte("k/" + org + "/" + key) }
func keyCall(id string) []byte          { return []byte("a/" + id) }
func keyEnded(id string) []byte         { return []byte("z/" + id) }
func keyPool(p *Pool) []byte            { return []byte("p/" + p.Org + "/" + p.Plan + "/" + p.Month) }
func keyEntries(org string) []byte      { return []byte("x/" + org + "/") }
func keyCDRs(org string) []byte         { return []byte("r/" + org + "/") }
func keyEntry(org string, seq uint64) []byte {
	return binary.BigEndian.AppendUint64(keyEntries(org), seq)
}

func keyCDR(org string, start time.Time, call string) []byte {
	k := binary.BigEndian.AppendUint64(keyCDRs(org), uint64(start.UnixNano()))
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

// write is one key set (or deleted, when val is nil) by an operation.
type write struct {
	key, val []byte
}

// txn collects what one operation writes. Operations check everything first
// and only then change memory and record writes, so a refused operation
// writes nothing.
type txn struct {
	seq  uint64 // the operation's number; entries take seq, seq+1, …
	last uint64 // the last number taken
	at   time.Time
	ws  []write
	// after is reported to the caller once the writes are durable: the
	// operation applied, but only in part (a step that debited the increment
	// used and could not hold the next one).
	after error
	// result is the increment the operation held or found, for tracing.
	result Increment
}

func (t *txn) put(key []byte, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		// Every record is a plain struct we built; failing here is a bug.
		panic(fmt.Sprintf("ledger: encode %s: %v", key, err))
	}
	t.ws = append(t.ws, write{key: key, val: b})
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

func (t *txn) del(key []byte) { t.ws = append(t.ws, write{key: key}) }

// pending is an operation applied in memory and waiting for its synced
// commit. An operation with no writes is a barrier: it is acknowledged once
// everything queued before it is durable (retries of applied operations).
type pending struct {
	seq  uint64
	ws   []write
	done chan error
}

// committer group-commits: every operation queued while one fsync runs goes
// into the next batch, so N concurrent callers cost about one fsync, not N,
// and operations reach the disk in the order they were applied in memory.
type committer struct {
	db      *pebble.DB
	observe func(time.Duration)

	mu     sync.Mutex
	queue  []pending
	wake   chan struct{}
	failed error
	stop   chan struct{}
	done   chan struct{}
}

func newCommitter(db *pebble.DB, observe func(time.Duration)) *committer {
	c := &committer{db: db, observe: observe, wake: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
	go c.run()
	return c
}

// enqueue must be called in the order operations were applied; the ledger
// calls it while holding its own lock, which gives that order.
func (c *committer) enqueue(seq uint64, ws []write) chan error {
	done := make(chan error, 1)
	c.mu.Lock()
	if c.failed != nil {
		c.mu.Unlock()
		done <- c.failed
		return done
	}
	c.queue = append(c.queue, pending{seq: seq, ws: ws, done: done})
	c.mu.Unlock()
	select {
	case c.wake <- struct{}{}:
	default:
	}
	return done
}

func (c *committer) run() {
	defer close(c.done)
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
	start := time.Now()
	b := c.db.NewBatch()
	var err error
	var last uint64
	for _, p := range q {
		for _, w := range p.ws {
			if w.val == nil {
				err = b.Delete(w.key, nil)
			} else {
				err = b.Set(w.key, w.val, nil)
			}
			if err != nil {
				break
			}
		}
		last = max(last, p.seq)
	}
	if err == nil && last > 0 {
		err = b.Set(keySeq, binary.BigEndian.AppendUint64(nil, last), nil)
	}
	if err == nil && !b.Empty() {
		err = b.Commit(pebble.Sync)
	}
	_ = b.Close()
	if c.observe != nil && last > 0 {
		c.observe(time.Since(start))
	}
	if err != nil {
		// The in-memory state now holds changes the disk does not: refuse
		// everything from here on (fail closed) until a restart rebuilds
		// memory from what is durable.
		err = fmt.Errorf("%w: commit: %v", ErrUnavailable, err)
		c.mu.Lock()
		c.failed = err
		c.mu.Unlock()
	}
	for _, p := range q {
		p.done <- err
	}
}

func (c *committer) close() {
	close(c.stop)
	<-c.done
}

func (c *committer) err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.failed
}

func openPebble(dir string, fs vfs.FS) (*pebble.DB, error) {
	opts := &pebble.Options{FS: fs}
	opts.Logger = quietLogger{}
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

func decodeRecord(key, val []byte, v any) error {
	if err := json.Unmarshal(val, v); err != nil {
		return fmt.Errorf("decode %q: %w", key, err)
	}
	return nil
}

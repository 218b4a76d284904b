package ledger

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/shopspring/decimal"
)

// event is one durable change. The ledger is an ordered log of events in
// Pebble under "e/" + big-endian sequence number; on open, replaying them in
// order rebuilds every org, user, trunk, hold and CDR exactly.
type event struct {
	Seq    uint64          `json:"seq"`
	Kind   string          `json:"kind"`
	At     time.Time       `json:"at"`
	Org    *Org            `json:"org,omitempty"`
	User   *User           `json:"user,omitempty"`
	Trunk  *Trunk          `json:"trunk,omitempty"`
	Deck   []byte          `json:"deck,omitempty"`
	Call   *Call           `json:"call,omitempty"`
	CallID string          `json:"call_id,omitempty"`
	OrgID  string          `json:"org_id,omitempty"`
	Amount decimal.Decimal `json:"amount,omitzero"`
	Key    string          `json:"key,omitempty"`
	End    *CDR            `json:"cdr,omitempty"`
}

const (
	evOrg    = "org"
	evUser   = "user"
	evTrunk  = "trunk"
	evDeck   = "deck"
	evFund   = "fund"
	evOpen   = "open"
	evAnswer = "answer"
	evRenew  = "renew"
	evClose  = "close"
)

var eventPrefix = []byte("e/")

func eventKey(seq uint64) []byte {
	k := make([]byte, 2+8)
	copy(k, eventPrefix)
	binary.BigEndian.PutUint64(k[2:], seq)
	return k
}

// pending is an event applied in memory and waiting for its synced commit.
type pending struct {
	key, val []byte
	done     chan error
}

// committer group-commits: every event queued while one fsync runs goes into
// the next batch, so N concurrent callers cost about one fsync, not N, and the
// order of events on disk is the order they were applied in memory.
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

// enqueue must be called in the order events were applied; the ledger calls
// it while holding its own lock, which gives that order.
func (c *committer) enqueue(key, val []byte) chan error {
	done := make(chan error, 1)
	c.mu.Lock()
	if c.failed != nil {
		c.mu.Unlock()
		done <- c.failed
		return done
	}
	c.queue = append(c.queue, pending{key: key, val: val, done: done})
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
	for _, p := range q {
		if err = b.Set(p.key, p.val, nil); err != nil {
			break
		}
	}
	if err == nil {
		err = b.Commit(pebble.Sync)
	}
	_ = b.Close()
	if c.observe != nil {
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

func encodeEvent(e *event) []byte {
	b, err := json.Marshal(e)
	if err != nil {
		// Every field is a plain value we built; failing here is a bug.
		panic(fmt.Sprintf("ledger: encode event: %v", err))
	}
	return b
}

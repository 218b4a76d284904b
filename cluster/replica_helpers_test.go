package cluster

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"log/slog"
	"sort"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/creditgate/creditgate/cluster/etcdtest"
	"github.com/creditgate/creditgate/ledger"
)

// The single-node ledger is a SharedConfig too: the table test compares
// the two.
var _ SharedConfig = (*ledger.Ledger)(nil)

// testT0 is every test ledger's clock, so records stamped on two ledgers
// (CreatedAt, UpdatedAt) compare equal.
var testT0 = time.Date(2026, 12, 3, 10, 0, 0, 0, time.UTC)

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// openReplicaLedger opens a real Pebble ledger in dir; closed when the test ends
// unless the test closed it first (closeLedger).
func openReplicaLedger(t testing.TB, dir string) *ledger.Ledger {
	t.Helper()
	l, err := ledger.Open(dir, ledger.Options{Now: func() time.Time { return testT0 }, Logger: quietLog()})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// replicaNode is one cluster node as the replica sees it.
type replicaNode struct {
	n   *Node
	l   *ledger.Ledger
	r   *Replica
	dir string
}

// startReplica joins node on cli, opens a ledger in dir and starts its
// replica; everything is closed when the test ends (stop closes early).
func startReplica(t testing.TB, cli *clientv3.Client, node, dir string) *replicaNode {
	t.Helper()
	rn := &replicaNode{n: join(t, cli, node), dir: dir}
	rn.open(t)
	return rn
}

func (rn *replicaNode) open(t testing.TB) {
	t.Helper()
	rn.l = openReplicaLedger(t, rn.dir)
	r, err := NewReplica(context.Background(), rn.n, rn.l, quietLog())
	if err != nil {
		rn.l.Close()
		t.Fatal(err)
	}
	rn.r = r
	t.Cleanup(rn.stop)
}

// stop closes the replica, then its ledger; twice is harmless.
func (rn *replicaNode) stop() {
	if rn.r != nil {
		rn.r.Close()
		rn.r = nil
	}
	if rn.l != nil {
		rn.l.Close()
		rn.l = nil
	}
}

// memberClient is a client of one etcd member only.
func memberClient(t testing.TB, m *etcdtest.Member) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{m.ClientURL}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// configDump is a ledger's whole configuration as the replica keeps it:
// org settings (no money, no local suspension), users, trunks, toll-free
// numbers and the deck's digest. Two ledgers hold the same configuration
// exactly when their dumps are equal.
func configDump(t testing.TB, l *ledger.Ledger) string {
	t.Helper()
	type dump struct {
		Orgs     []ledger.Org
		Users    []ledger.User
		Trunks   []ledger.Trunk
		TollFree []ledger.TollFree
		Deck     string
	}
	var d dump
	for _, id := range l.OrgIDs() {
		o, err := l.Org(id)
		if err != nil {
			t.Fatal(err)
		}
		o.Balances = ledger.Balances{}
		o.LowBalanceWarned = time.Time{}
		o.AutoRecharge.Suspended = ""
		d.Orgs = append(d.Orgs, o)
	}
	d.Users = l.UsersAll()
	d.Trunks = l.Trunks()
	d.TollFree = l.TollFreeAll()
	sort.Slice(d.TollFree, func(i, j int) bool { return d.TollFree[i].Number < d.TollFree[j].Number })
	if deck := l.Deck(); deck != nil {
		sum := sha256.Sum256(deck)
		d.Deck = hex.EncodeToString(sum[:])
	}
	b, err := json.Marshal(d)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// storeRevision is etcd's current revision: a refused change must leave it
// where it was.
func storeRevision(t testing.TB, cli *clientv3.Client) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, "rev-probe")
	if err != nil {
		t.Fatal(err)
	}
	return resp.Header.Revision
}

// percentile of sorted durations (nearest rank).
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(p*float64(len(sorted))+0.5) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

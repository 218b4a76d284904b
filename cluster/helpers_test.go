package cluster

import (
	"context"
	"testing"
	"time"

	"github.com/shopspring/decimal"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/creditgate/creditgate/internal/clock"
)

const testPrefix = "/creditgate/"

func testConfig(node string) Config {
	return Config{
		Prefix:         testPrefix,
		NodeID:         node,
		LeaseTTL:       2 * time.Second,
		Margin:         500 * time.Millisecond,
		KeepAliveEvery: 300 * time.Millisecond,
		OpTimeout:      5 * time.Second,
	}
}

// join joins node on cli with the real clock; the node is closed when the
// test ends (closing twice is harmless).
func join(t testing.TB, cli *clientv3.Client, node string) *Node {
	t.Helper()
	n, err := Join(context.Background(), cli, testConfig(node), clock.Real{})
	if err != nil {
		t.Fatalf("join %s: %v", node, err)
	}
	t.Cleanup(func() { n.stopKeepAlive() })
	return n
}

func dec(s string) decimal.Decimal { return decimal.RequireFromString(s) }

// mustCheck fails the test unless the invariant holds now.
func mustCheck(t testing.TB, n *Node) State {
	t.Helper()
	st, err := n.Check(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return st
}

package cluster

import (
	"fmt"
	"time"
)

// Config is one node's cluster settings. The package validates it and does
// not default it: defaults belong to configs.Default() once the gateway is
// wired to this package.
type Config struct {
	// Prefix is prepended to every key this package reads or writes, e.g.
	// "/creditgate/"; it ends with '/'.
	Prefix string
	// NodeID names the node (no '/'); several incarnations of one node id
	// have different epochs.
	NodeID string
	// LeaseTTL is the etcd lease's time to live, whole seconds, at least
	// 2 s (etcd 3.4 raises shorter TTLs to its minimum anyway).
	LeaseTTL time.Duration
	// Margin is subtracted from the lease's end for the local deadline, to
	// cover clock-rate differences and the time a sale takes to land.
	Margin time.Duration
	// KeepAliveEvery is how often the node renews its lease; less than
	// LeaseTTL − Margin, or the deadline lapses between renewals.
	KeepAliveEvery time.Duration
	// OpTimeout bounds every etcd request the node makes.
	OpTimeout time.Duration
}

// Validate names the first bad setting.
func (c Config) Validate() error {
	switch {
	case c.Prefix == "" || c.Prefix[len(c.Prefix)-1] != '/':
		return fmt.Errorf("cluster prefix %q: must end with '/'", c.Prefix)
	case validID("cluster node_id", c.NodeID) != nil:
		return validID("cluster node_id", c.NodeID)
	case c.LeaseTTL < 2*time.Second || c.LeaseTTL%time.Second != 0:
		return fmt.Errorf("cluster lease_ttl %s: whole seconds, at least 2s", c.LeaseTTL)
	case c.Margin <= 0 || c.Margin >= c.LeaseTTL:
		return fmt.Errorf("cluster lease_margin %s: must be in (0, lease_ttl)", c.Margin)
	case c.KeepAliveEvery <= 0 || c.KeepAliveEvery >= c.LeaseTTL-c.Margin:
		return fmt.Errorf("cluster keepalive_every %s: must be in (0, lease_ttl − lease_margin)", c.KeepAliveEvery)
	case c.OpTimeout <= 0:
		return fmt.Errorf("cluster op_timeout %s: must be positive", c.OpTimeout)
	}
	return nil
}

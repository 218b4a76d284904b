package ledger

// SliceOnly marks the ledger as a cluster node's: its balances are the
// node's slices of the orgs' money (cluster.Books), not the orgs' money.
// Whether an org's balance is below its auto-recharge threshold is then a
// question for the whole cluster, answered by the cluster's one payer from
// etcd (cluster/payer.go); a purchase started here from a slice's balance
// would be one per node, paid by no one, and would show as the org's
// pending purchase. So from now on the ledger starts no auto-recharge
// purchase. Its slice-level balance_zero notifications are still queued
// (the cluster's outbox drops them, cluster/notifier.go). A cluster node
// calls it before it serves calls; a single node never does.
func (l *Ledger) SliceOnly() {
	l.mu.Lock()
	l.sliceOnly = true
	l.mu.Unlock()
}

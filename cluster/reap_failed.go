// A node that failed closed leaves the cluster, so that survivors reap it
// (issue 17, edge (c)).

package cluster

import (
	"context"
	"errors"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
)

// failedPoll is how often the reaper's companion looks whether the Books
// failed closed. The look is a mutex read; the poll bounds how long after
// the failure the node's lease is given up (before: its keepalives still
// went, so its calls waited for its restart).
const failedPoll = 50 * time.Millisecond

// watchFailed gives the node's lease up once its Books failed closed for
// any reason but a lost lease (takeover records that could not land, a
// slice gone): such a node sells nothing, closes no recorded call (its
// CloseCall is refused, so it writes no CDR of its own for them) and
// answers no call, but while its keepalives went on its member key stood
// and no survivor would reap it; its calls ran on unbilled until it was
// restarted. Order:
//
//  1. The Books are failed (b.failed set, never cleared): every change
//     that could settle a recorded call here is refused from then on.
//  2. Keepalives stop (abandon): from now the lease expires within its
//     TTL even if etcd cannot be reached to revoke it.
//  3. The lease is revoked (best effort): members/<epoch> goes at once,
//     so every later write of this incarnation is fenced — nothing it
//     does can change what a survivor reads — and survivors' reapers
//     claim it and settle its calls from their takeover records.
//
// A close that passed its check just before the failure may still commit
// locally with its closed record refused: that is edge (a), a call closed
// here and reaped as live, whose local CDR the node's restart replaces by
// the survivor's (ledger.Options.SettledElsewhere). Until that restart —
// nothing forces it — the call has two CDRs, this node's and the
// survivor's (the one of record). This node does not supersede its own at
// run time: it would have to read the survivor's settled claim from etcd,
// and an etcd it cannot reach is the usual reason it failed; and its calls
// still up hold money, so the refund's debit again (ledger chargeExtra)
// would be capped by holds that only the restart settlement releases
// (documented
// in doc.go's "Not done yet" and the README's edges).
func (b *Books) watchFailed() {
	defer b.wg.Done()
	defer b.reap.wg.Done()
	t := time.NewTicker(failedPoll)
	defer t.Stop()
	for {
		select {
		case <-b.reap.ctx.Done():
			return
		case <-t.C:
		}
		err := b.Err()
		if err == nil {
			continue
		}
		if errors.Is(err, ErrFenced) {
			return // the lease is gone already
		}
		b.log.Error("cluster: the node failed closed; giving its lease up so that a survivor reaps its calls", "node", b.n.ID(),
			"epoch", b.n.Epoch(), "error", err)
		if rerr := b.n.abandon(b.reap.ctx); rerr != nil {
			b.log.Error("cluster: revoking the lease failed; it expires within its TTL (keepalives stopped)", "error", rerr)
		}
		return
	}
}

// abandon stops the keepalives, revokes the lease (best effort: without it
// the lease expires within its TTL) and marks the node fenced: what a
// failed node does so that survivors take its calls over at once.
func (n *Node) abandon(ctx context.Context) error {
	n.stopKeepAlive()
	n.mu.Lock()
	n.lost = true
	n.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, n.cfg.OpTimeout)
	defer cancel()
	if _, err := n.cli.Revoke(ctx, n.lease); err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
		return err
	}
	return nil
}

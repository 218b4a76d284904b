// Package cluster is the etcd side of cluster mode (issue 16): the money of
// record lives in etcd; each node spends locally from slices it has
// reserved. It is the foundation only: nothing outside cluster/ imports it
// yet, and the single-node build does not link it.
//
// # Design
//
// A Node joins with an etcd lease (Config.LeaseTTL) and takes an epoch: a
// counter key incremented in the same transaction that creates
// members/<epoch> on the lease. Per org, accounts/<org> holds
// {funded, unallocated, spent} as decimal strings; fundings/<org>/<key>
// makes Fund idempotent; slices/<node>/<org> is credit granted to one node
// (one per org per node), reclaims/<slice id> records who reclaimed a dead
// node's slice. Every operation is one transaction compared on the mod
// revisions it read, retried at most maxAttempts times (then
// ErrContention):
//
//	Fund(org, amount, key)   → funded += a, unallocated += a, once per key
//	Grant(org, amount)       → unallocated −= a, new slice{granted: a}
//	Report(slice, spentSoFar)→ slice.spent = s, spent += the difference
//	Return(slice, unspent)   → unallocated += unspent, spent += the rest, slice deleted
//	Reclaim(deadNode)        → per slice of an expired incarnation: unallocated += unspent, slice deleted, once
//	Debit / DebitMany        → direct mode: unallocated −= a, spent += a (a batch in one transaction)
//
// # Invariant
//
// For every org, at every revision:
//
//	funded = unallocated + Σ (granted − spent) of its slices + spent
//
// every term ≥ 0, each slice 0 ≤ spent ≤ granted, and funded = Σ fundings.
// Check reads the whole prefix in one revision and verifies it; so spent
// never exceeds funded.
//
// # Fencing
//
// Every write of a node — and every read it decides on — is in a
// transaction that first compares members/<epoch> still has the create
// revision of the node's join; that key dies with the lease, so a node
// whose lease was revoked or expired (paused, partitioned) gets ErrFenced
// and changes nothing. Before it sells, a node calls Sellable: its local
// deadline is the send time of the last acknowledged keepalive + the TTL
// etcd granted − Config.Margin, on the injected clock, which passes before
// etcd can expire the lease; survivors Reclaim only after etcd has removed
// members/<epoch>. Slice keys are deliberately not attached to the lease
// (etcd would delete money of record); they carry the epoch instead, see
// Slice.
//
// # Not done yet (for the next session)
//
//   - Wiring: a ledger.Books implementation (ledger/seam.go) that feeds a
//     slice into the node's Pebble ledger as a funding idempotent on the
//     slice id, asks for the next slice at a low-water mark, Reports
//     spending (batched), Returns on idle and shutdown, switches an org to
//     direct mode (DebitMany, batched per node) when unallocated is below a
//     few seconds of its burn, and checks Node.Sellable before every hold.
//     No "return" operation exists in the ledger yet; no config section
//     (cluster: endpoints, TLS, lease TTL, margin, slice policy) and no
//     --cluster-etcd flag.
//   - Reclaim returns a dead node's whole unreported remainder to
//     unallocated: what the node sold after its last Report is then sold
//     again by others. The exposure is bounded by the slice size and the
//     reporting interval; settling it exactly from the dead node's ledger
//     is the takeover of issue 17. Nothing reaps dead nodes automatically:
//     a survivor must call Reclaim (a watch on members/ is the natural
//     trigger).
//   - Minute pools: only credits have accounts; the monthly pools need the
//     same three terms per pool and month.
//   - Config watching (orgs, users, trunks, the rate deck, the catalogue,
//     fraud settings in etcd, watched by every node), singletons (payer and
//     notifier behind an etcd election), cross-node reads (cluster-wide
//     balance, calls on every node, merged histories), TLS to etcd,
//     metrics, and the README's deployment and capacity sections.
//
// Tested against Debian's etcd-server 3.4.23 with go.etcd.io/etcd/client/v3
// v3.6.16 (cluster/etcdtest starts the real binary).
package cluster

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
// # Shared configuration (Replica)
//
// The admin changes of ledger.Books — orgs and their settings (block
// premium, contacts, fraud guard, auto-recharge setting), users with their
// numbers and licenses, trunks, toll-free numbers, the rate deck — live in
// etcd under config/, one key per record, JSON values, so a watch event is
// one change (key layout above Replica, replica.go). A Replica
// (NewReplica) keeps a node's local *ledger.Ledger holding them:
//
//	start:  one paged read of config/ at revision R, applied with
//	        ledger.Apply (creates, updates, and deletes what the ledger has
//	        and etcd does not; orgs are never deleted), then a watch from R+1
//	watch:  each response's events, in revision order, in one ledger.Apply;
//	        Applied() is the last revision applied; DeckChanged and
//	        TrunksChanged signal what the gateway keeps parsed
//	resync: a compacted or cancelled watch, or a failed deck fetch, ends
//	        the watch; the replica reads config/ whole again (pausing 100 ms
//	        doubling to 5 s while that fails) and watches from there
//
// Writes (Replica's methods, the SharedConfig cluster.Books delegates to)
// check the ledger's own rules (ledger/apply.go: PrepareOrg, PrepareUser,
// CheckPutUser, … — the ledger's admin methods call the same functions), on
// the configuration read at one etcd revision, then write one fenced
// transaction that compares what the decision read: a new org's key absent
// (of two nodes creating one id, one gets ErrOrgExists), each newly claimed
// number's index/number key unchanged (of two nodes giving one number away,
// one gets ErrNumberTaken), a trunk's index/delivers prefix empty before it
// is deleted, and so on; a lost comparison re-reads and decides again. The
// write returns once this node's watcher has applied its revision
// (read-your-writes), answering as the local ledger does. etcd out of
// reach, a fenced node (ErrFenced) and a watcher that does not catch up
// within Config.OpTimeout are ledger.ErrUnavailable. A deck goes in 1 MiB
// chunks under deck/<id>/ (each its own transaction: etcd takes 1.5 MiB per
// request and 128 operations per transaction by default); config/deck, the
// pointer with the deck's size and SHA-256, flips last, then the old
// chunks are deleted.
//
// A node whose ledger holds a configuration refuses to start its replica on
// an etcd whose config/ is empty (ErrUnseeded: applying it would delete
// every user, trunk and number); Seed copies such a ledger's configuration
// (not its money) into etcd once, the way a single-node installation
// becomes a cluster's first node.
//
// What is decided on one node only: ErrInUse for deleting a user or a
// toll-free number while a call of it is up is checked against this node's
// calls; a call up on another node goes on after the delete (that node
// applies it anyway), billed to its org. SetAutoRecharge stores the
// setting but starts no purchase (the cluster's one payer, not yet built,
// decides that); a suspension a payer recorded in its node's ledger stays
// there until a newer setting is put. No money moves through the replica.
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
//   - The plan catalogue in etcd (the Replica above carries the rest of the
//     shared configuration), singletons (payer and
//     notifier behind an etcd election), cross-node reads (cluster-wide
//     balance, calls on every node, merged histories), TLS to etcd,
//     metrics, and the README's deployment and capacity sections.
//
// Tested against Debian's etcd-server 3.4.23 with go.etcd.io/etcd/client/v3
// v3.6.16 (cluster/etcdtest starts the real binary).
package cluster

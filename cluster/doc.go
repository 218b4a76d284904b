// Package cluster is the etcd side of cluster mode (issue 16): the money of
// record lives in etcd; each node spends locally from slices it has
// reserved (Books). Nothing outside cluster/ imports it yet, and the
// single-node build does not link it.
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
//	Resize / ResizeMany      → the holder's slice set to what it has (the difference to or, after a
//	                           refund, from spent), then up to Max taken from unallocated (≥ Min,
//	                           at most Share of it) or −Max given back; slice created or deleted
//	                           as needed (a batch of up to 60 orgs in one transaction)
//	Charge(org, a, key)      → once per key: a restarted node's unreported spend, unallocated → spent
//	                           (or back, if negative)
//	PoolMove(pool, req)      → minute pools (pools.go): the pool's total follows the licenses, the
//	                           node's used minutes reported, minutes taken (≥ Need, ≤ Want, at most
//	                           half of unallocated) or given back (Granted lowered to GiveTo)
//	reap (reap_money.go)     → a dead incarnation's slices: unallocated += reported unspent − spent
//	                           after the report (from its takeover records), spent += the rest,
//	                           slice deleted, reclaim record (reaped); its pool slices likewise
//
// # Invariant
//
// For every org, at every revision:
//
//	funded = unallocated + Σ (granted − spent) of its slices + spent
//
// every term ≥ 0, each slice 0 ≤ spent ≤ granted, and funded = Σ fundings.
// For every minute pool (org, plan, month), in whole minutes:
//
//	total = unallocated + Σ (granted − used) of its slices + used
//
// every term ≥ 0, each pool slice 0 ≤ used ≤ granted, and the account's
// used = Σ its slices' used. Check reads the whole prefix in one revision
// and verifies both; so spent never exceeds funded, nor used minutes the
// pool's total.
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
// every user, trunk and number). SeedCluster (seed.go, "creditgate cluster
// seed") moves such a single node into an empty etcd — configuration, API
// keys, each org's balance as an etcd funding (the ledger zeroed by a
// ledger.SeedSlice entry first), the month's pool usage as the node's pool
// slices — each step idempotent, so a rerun after a crash finishes it
// exactly once; until it is done CheckSeeded refuses nodes. Seed copies
// the configuration only (no keys, no money), once.
//
// What is decided on one node only: ErrInUse for deleting a user or a
// toll-free number while a call of it is up is checked against this node's
// calls; a call up on another node goes on after the delete (that node
// applies it anyway), billed to its org. SetAutoRecharge stores the
// setting but starts no purchase (the cluster's one payer decides that,
// below); a decline is a new version of the setting with Suspended set
// (Payer.suspend), so every node applies it, and putting the setting
// again clears it. No money moves through the replica.
//
// # Spending: Books (books.go, books_slice.go, books_tick.go)
//
// Books is the ledger.Books of a cluster node. Calls are held, stepped and
// closed in the node's own Pebble ledger, at local speed; the money there
// comes from the node's slice of each org:
//
//   - Into the ledger as "slice" entries (ledger.CreditSlice), out of it as
//     "return" entries (ledger.ReturnSlice, available money only), both
//     idempotent on (slice id, movement number). Slice.Moves numbers the
//     movements in etcd; the ledger keeps the org's last one (c/{org}).
//     Money comes in etcd first, then into the ledger; it goes out of the
//     ledger first, then back in etcd: a crash between the two never lets
//     the node sell money etcd did not give it, and the restart sees which
//     side the movement reached by comparing the numbers.
//   - A hold (OpenCall, Step) that does not fit locally fills the org from
//     etcd synchronously, then is decided again locally; a hold that leaves
//     less than LowWater of the node's burn starts a background top-up of a
//     slice's worth (SliceBurn of burn, at least MinSlice, at most half of
//     what is unallocated). One etcd operation per org per node at a time.
//   - Every ReportEvery, one ResizeMany per 60 orgs sets each slice's
//     unspent to the local balance (held money included): the node's
//     spend reaches etcd's spent within a tick. A refund after a report
//     (liveness.go's BillTo) makes the balance exceed the slice's unspent,
//     and the difference moves back from spent into the slice, so spent
//     always equals the ledgers' debits net of refunds once reported.
//   - Idle orgs (no hold, step or close for IdleAfter, nothing held) give
//     their slice back; Close gives every slice back.
//   - Direct mode: when the org's unallocated money covers less than
//     DirectBelow of the node's burn (or less than MinSlice), the node gives
//     back its available money (at the next tick) and each hold takes from
//     etcd exactly its shortfall, with the org's etcd lock held across the
//     local hold; other nodes follow within a tick (their reports read the
//     account). Back to normal at twice the threshold.
//   - A hold refused because not even its shortfall is unallocated gives
//     back what the node has available at once: pieces of the last money
//     stranded on several nodes come together in unallocated, where one
//     node's next hold takes them.
//   - An etcd failure that may have landed (a timeout, a lost connection)
//     marks the org unsure: its next etcd operation first reads the slice
//     back and adopts it (a grant that landed is credited then, by its
//     movement number). A give-back whose etcd half failed stays pending,
//     counted as still had by every report, and is completed first.
//   - Node.Sellable before every hold: past the local deadline the hold is
//     refused with ledger.ErrUnavailable (a Step's refusal ends the call;
//     its CloseCall pays the increment it held); fenced, Err() is non-nil
//     and every change refused.
//   - Org and Money answer with the cluster's balance (etcd funded − spent
//     as last read, at most about a tick old for orgs read often, minus
//     this node's unreported spend) and this node's held.
//   - NewBooks settles the node's last incarnation: reclaims its slices
//     (waiting for etcd to expire the old lease), charges its unreported
//     spend (Charge, idempotent on the old slice), takes the leftover back
//     in the ledger (ReturnSlice).
//
// # Takeover (takeover.go, books_takeover.go, reap*.go, rejoin.go; issue 17)
//
// A node that dies mid-call must not leave its calls running unpaid nor
// its money stranded until it comes back:
//
//   - Takeover records: every answered, non-free call has a record at
//     takeover/<node>/<epoch>/<call> with what a survivor needs to end
//     and settle it: the call (CDR fields, committed charge and minutes,
//     the increment it holds), the gateway's dialog record, the end of
//     what it paid, and its committed (charge, minutes) history by local
//     ledger sequence number. AnswerDialog, Step and UpdateDialog return
//     only once it landed; StepPending and UpdateDialogPending (what the
//     gateway calls) return once the local change is made, with a channel
//     that yields when the record landed, which the gateway waits on
//     without its call's lock; a refused step and CloseCall (the record
//     rewritten closed, with the CDR) let it land behind them, the org's
//     gate entered until then, so the legs' BYEs wait for no etcd trip; one
//     committer per node writes the queued records in fenced transactions
//     of up to 120 keys, a batch as soon as the previous one returned (no
//     timer), retried through an etcd leader election within OpTimeout;
//     after that the books fail closed (ErrUnavailable), like a disk
//     failure. A closed record is deleted once a landed report covers it.
//   - Reports carry AsOf, the local ledger's sequence number at which the
//     balance (or pool usage) they set the slice to was read (Slice.AsOf,
//     PoolSlice.AsOf). Each org's gate (orgSpend.gate) keeps every charge
//     change's record landed before a report sends a balance read after
//     it (the report waits; the change does not), so, for a dead
//     incarnation, what its calls spent after its last report is Σ
//     (final − committed as of AsOf) over its records: exact.
//   - The reaper (StartReaper): a watch on members/ (and a look every 5
//     lease TTLs); for each dead incarnation of another node that left
//     records, slices, pool slices or an unfinished claim, a survivor
//     claims reaps/<node>/<epoch> (create if absent, fenced; exactly one
//     wins; a claimer that dies is taken over by compare-and-set once its
//     own member key is gone), then, each step landing once with the
//     claim's progress: the plan (each call's final and end), the CDRs
//     (reason node_failure) adopted into its own ledger pending
//     (AdoptCDRsFor), then named in the claim (AdoptedBy, this
//     incarnation), then confirmed — a claimer that died in between drops
//     its copies when it starts again, its successor's being the ones of
//     record (reap_adopt.go) —, BYEs
//     to both legs at the end of what each call paid (at once if past)
//     through the LegEnder the binary gives (gateway.EndLegs), the money
//     (see reap above), the records deleted, the claim done — not done if
//     a BYE could not leave (the gateway closing: EndLegs answers an
//     error), so a survivor takes it over; the binary stops the reaper
//     (StopReaper) before it closes the gateway.
//   - Rejoin: a restarted node (same id, same data directory, locked)
//     claims, before opening its ledger, each of its earlier incarnations
//     nobody claimed (ClaimOwn: at once, the lock proves the old process
//     gone) and settles them from its disk as before (restart CDRs, own
//     BYEs, settleRestart's charge), then deletes their records. The calls
//     survivors reaped go to ledger.Options.SettledElsewhere: ended without
//     a CDR or a charge of their own, CloseCall answers ErrCallEnded, and
//     their dialog records go (the survivor owns their BYEs); if the last
//     incarnation was reaped, settleRestart charges nothing (the reaper
//     settled etcd exactly) and the leftover goes back locally, and
//     (ledger.Options.LastReaped) an answered call the reaper had no
//     record of (the node died with it in flight; the caller never got
//     the 200) is released at its committed charge, no CDR, its dialog
//     kept for the callee's BYE. A call it closed whose closed record never
//     landed (it died in between) was reaped as up: its own CDR is
//     replaced by the settled-elsewhere marker, a refund its close made
//     debited again (ledger/adopt_pending.go), so the survivor's CDR is
//     the one, at what etcd settled. An org the reaper found no slice of
//     (given back whole, then money came back from a refund or release)
//     is settled from disk as after any crash (Rejoin.ReapedOrgs). A
//     survivor's claim on it whose claimer died before adopting a CDR is
//     taken over by the node itself (a two-node cluster has nobody else);
//     one that adopted CDRs is waited for (a survivor finishes it). A
//     self-claim whose claimer (the restart) died is taken over by a
//     survivor, which reaps from the records, only while the claim is not
//     marked Settling: the restart marks it (a fenced step) before it
//     writes anything of the incarnation's money to etcd, so all it can
//     have done before is end the calls in its ledger, and the next start
//     supersedes those CDRs as above. A Settling claim is finished by the
//     node's next start only, from its disk (reclaim records, Charge
//     idempotent on its key).
//   - Graceful stop: Close finishes the takeover record writes queued or
//     in flight (closed records of calls the gateway just ended) before it
//     gives the slices back and deletes the records.
//   - A node that is fenced, or past its deadline without etcd confirming
//     its lease, closes no answered call (ErrUnavailable: no CDR of its
//     own; a survivor or its restart settles it) and answers no call.
//   - Failed closed (records that could not land, a slice gone): the
//     Books refuse every change from then on; the node stops its
//     keepalives and revokes its lease (reap_failed.go, started with the
//     reaper), so its writes are fenced and survivors reap its calls.
//
// # Minute pools (pools.go, pools_books.go)
//
// Pools are spent the way credits are, in whole minutes, per (org, plan,
// month): etcd's pools/<org>/<plan>/<month> {total, unallocated, used},
// each node's poolslices/<node>/… {granted, used}, and in the node's ledger
// an allowance (ledger/poolslices.go: with LimitPools, a hold needs
// used + held + 1 ≤ allowance). The slice is two absolute numbers, not
// movements: minutes enter etcd first, then the allowance; leave the
// allowance first, then etcd; so the allowance is never above granted and
// any retry or restart just sets the numbers again (the slice is per node,
// adopted by its next incarnation). Total follows the licenses every node
// applies from the shared configuration: created by the pool's first
// PoolMove, raised when licenses grow, lowered by at most unallocated when
// they shrink. A pool hold finding no minute in the allowance asks etcd
// synchronously for a few (5, at most half of what is unallocated), or
// exactly one in direct mode (fewer than 10 unallocated: the tick gives
// every unheld minute back); the pool's lock on the node is held across
// the local hold, so the minute made sure of is the hold's.
// Reports ride the report tick (one transaction per changed pool); idle
// pools and Close give unused minutes back.
//
// # Singletons: the payer and the notifier (singleton.go, payer.go,
// purchases.go, notifier.go)
//
// Work that must run once per cluster runs on the node that created
// singleton/<name> on its own lease (Singleton: a fenced create-if-absent;
// the others watch the key and try again when etcd deletes it). A leader
// stops its work when its key goes or its local deadline passes, which is
// before etcd can expire the lease and a peer take over; every write of
// the work is fenced and idempotent anyway.
//
//	payer     every second: each org with auto-recharge on, not suspended,
//	          whose cluster balance (funded − spent) is below its threshold
//	          gets a purchase — purchases/<org>/<id> and pending/<org>/<id>,
//	          with recharging/<org> created if absent (one pending per org);
//	          one-time purchases are started by any node's API the same way
//	          (purchasekeys/<org>/<key> for idempotency). Each pending one is
//	          charged through payments.Charger with its id as Stripe's
//	          idempotency key; paid: Fund(org, amount, "%P"+id), then closed
//	          with recharge_succeeded queued in the same transaction;
//	          declined: the setting suspended, then closed with
//	          recharge_failed / purchase_failed queued.
//	notifier  package notify's Sender over the outbox in etcd (outbox/<id>);
//	          every second balance_zero for orgs whose cluster balance went
//	          to zero (zeroed/<org> until funded again), and the low-balance
//	          sweep (lowwarned/<org>), each mark written in the transaction
//	          that queues its notification. A fraud_guard trip on any node
//	          is queued there by that node (Guard.Tripped: once per guard
//	          per org an hour cluster-wide, guardtrips/<org>/<guard> written
//	          in the same transaction); every node forwards what its own
//	          ledger's outbox still has of fraud_guard and drops the rest
//	          (they speak of its slices).
//
// # The fraud guard across the cluster (guard.go, guard_exact.go)
//
// An org's fraud-guard limits on calls up and on spend per hour hold
// exactly for the org across the nodes. Each node's figures for an org
// with such a limit — calls up (per user too if a per-user limit is set)
// and credit held per unix minute of the last hour — are a claim at
// guard/<org>/<node>, on its lease, and its ledger (ledger.Options.
// PeerGuard, a ledger.GuardReserver) admits a call or holds credit only
// if its claim covers its own figures plus its reservations under way.
// A claim is raised (Guard.Reserve, called by the ledger before it takes
// its lock) in one fenced transaction that compares guard/<org>/'s
// revision (etcd 3.4's range compare: no key under the prefix modified or
// created since the read), re-read on a lost race, and only as far as the
// claims' sum stays within each limit; lowered (a call ended, a refusal,
// spend leaving the hour) in the coalesced publication, at once in the
// upper half of a limit, else at most every GuardEvery (100 ms), in
// transactions of up to 120 orgs. Below half a limit a raise takes a
// quarter of the room left as headroom, so setup makes no etcd request
// until it is used; from half on every admission is a raise. A node gives
// back headroom when a peer's claim changes (its watch marks the org).
// etcd not answering in time fails the admission closed (ErrUnavailable).
// Invariant: a node's claim in its ledger ≤ its key in etcd ≤ what a
// serialized raise allowed, so the cluster's figures ≤ the sum of the keys
// ≤ the limit at every revision (guard_test.go asserts it from a watch);
// calls already up when a limit is set are published as they are (a
// claim is never below the node's own figures), and refuse new ones.
// A dead node's claims vanish with its lease. Cost: one read and one
// transaction per admission near a limit (6–9 ms more setup measured
// under -race on 3 nodes), about 0.03 per call far from it.
//
// # Not done yet (for the next session)
//
//   - Takeover edges (reap*.go; reap_edges_test.go crashes at each): a
//     call whose local close landed and whose closed record did not is
//     billed and reported as the survivor settled it (node_failure,
//     through the increment it held), not as it ended (a pool-minute
//     refund its close made is not taken back: the ledger debits credits
//     again only); money a node got
//     back (a refund, a release) after giving an org's slice back whole
//     is counted spent in etcd until its next tick gives it back, and if
//     it dies first only its restart does (never back: lost to the org,
//     at most one tick's refunds); a restart that died after marking its
//     self-claim Settling leaves the incarnation to the node's next start
//     (no survivor's BYEs for its calls meanwhile; never, if the node
//     never comes back); a node that failed closed and keeps running has
//     two CDRs for a call whose close passed closable just before the
//     failure (its own and the survivor's adopted one) until its restart
//     supersedes its own — superseding it at run time would need the
//     survivor's claim read from etcd, which is often what failed; a call
//     spanning two pool months has its minutes counted on the last
//     month's pool.
//     A revoked (not expired) lease is seen by the node at its next
//     keepalive or etcd operation: until then it may sell from its local
//     slice (its records still land only while the lease stands).
//   - A closed takeover record is deleted once a report covers it; an org
//     with nothing more to report keeps its closed records in etcd until
//     its next report (garbage, not money: a survivor reading them settles
//     nothing twice). TestReapModel's end check waits for them and fails
//     with CLUSTER_SEED=1796319828349694576. Reporting the same balance
//     again to cover them double-counted a step in a test of a prefill
//     (asking etcd for the next increment ahead, since reverted) and was
//     reverted too; why is not understood yet.
//   - The unsure/pending recovery above is exercised by no test that
//     injects etcd failures (the tests run real etcd, which does not fail
//     on cue); the restart settlement covers the same cases by movement
//     numbers and is tested (restart_test.go).
//   - Direct-mode holds of one node are serialized per org, one etcd
//     transaction each (DebitMany-style batching of concurrent holds is not
//     done). Money a node released or was refunded in direct mode waits up
//     to a tick before it is given back.
//   - Minute pools: pool reports are one transaction per
//     changed pool per tick (not batched like ResizeMany). Once a pool is
//     used up, every increment of a call of its plan (going on credits)
//     reads etcd once to look for minutes given back. PoolsLeft answers
//     from the node's ledger: the licensed total, this node's used and
//     held (it over-estimates; OpenCall and Step decide again). Pools (the
//     API's) reads etcd's total and used (books_reads.go).
//   - The local ledgers start no auto-recharge purchase of their own
//     (ledger.SliceOnly) and Books.PendingPurchaseOf answers from etcd
//     (UsePurchases); their slice-level balance_zero notifications are
//     still queued and dropped by Outbox.Forward. Fraud-guard calls
//     and spend limits are exact cluster-wide (above); near a limit each
//     admission is an etcd transaction, refused while etcd cannot answer. The
//     max_charge_per_call and max_call_duration_s limits are per call, so
//     per node is exact for them. The low-balance forecast's burn
//     rate is the notifier node's own history, not the cluster's.
//   - Cluster-wide reads (api/cluster*.go) ask the nodes registered on a
//     live lease and name the others that ever registered (nodes/<id>,
//     registry.go) as unavailable: a down node's history (CDRs,
//     transactions, audit entries, on its disk) is missing from them until
//     it rejoins, said plainly. The
//     org's held, pools, transactions (with the fundings etcd keeps,
//     fundings_list.go) and forecast are merged; the notifier's low-balance
//     forecast is not: the cluster's forecast is computed by the admin API
//     from each peer's admin API, asked with the caller's key, and the
//     notifier (in this package, which the API is not) has no key to ask
//     with; a node-to-node credential would be new.
//   - A step whose money must come from etcd (a grant: the node's slice
//     ran dry; direct mode) waits for etcd with the gateway's call mutex
//     held: a call whose org's money runs out during an etcd leader
//     election ends when etcd answers, billed to its paid time (README,
//     "Metering during an etcd leader election"). Steps paid from the
//     slice and hang-ups no longer wait for their takeover records
//     (StepPending).
//
// Tested against Debian's etcd-server 3.4.23 with go.etcd.io/etcd/client/v3
// v3.6.16 (cluster/etcdtest starts the real binary).
package cluster

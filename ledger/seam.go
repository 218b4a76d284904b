package ledger

import (
	"encoding/json"
	"time"

	"github.com/shopspring/decimal"
)

// Books is the ledger as the gateway and the admin API reach it: the
// operations they call, and nothing else. *Ledger (Pebble, one process) is
// its one implementation today; a second one (the cluster mode, on etcd)
// plugs in here and must keep the contract below, which is what the gateway,
// the API and their tests rely on. The payer, the notifier and the binary
// still take *Ledger.
//
// What holds across calls:
//
//   - Durable when it returns. A change that returned without an error
//     survives a crash of the process (and, for a cluster, of any one node),
//     and a later read sees it. The two exceptions are said where they are:
//     OpenCall of a Call with Unsynced set, and ForgetDialog.
//   - Linearizable. Each operation takes effect at one instant between its
//     call and its return, and every operation sees all that took effect
//     before it. A read may see a change whose operation has not returned
//     yet (and that a crash before it returns could still lose), never one
//     that was refused.
//   - Money never goes negative and is never held twice: for every org,
//     Available = Balance − Held ≥ 0 at every instant, Held is the sum of
//     what its calls up hold, Funded − Debited = Balance (Debited net of
//     refunds), and a pool's
//     Used + Held ≤ Total. Whether an increment fits is decided again at the
//     instant it is held, so two calls racing for the last credit or minute
//     cannot both win.
//   - A call's increments are strictly sequential: at most one is held; N+1
//     is held only once N is committed or released. A call that has ended
//     holds nothing and has exactly one CDR, whose charge is the sum of the
//     call's debits.
//   - Retries are safe where a method says it is idempotent: the retry of an
//     operation that took effect changes nothing and answers as the first
//     one did, once the first one is durable.
//   - Calls left up by a process that stopped are settled when the next one
//     starts (reason ReasonRestart; an answered call pays the increment it
//     had started, an unanswered one nothing), and their
//     dialog records are in Dialogs for the SIP side to end their legs.
//   - Refusals are the sentinel errors of types.go (and *Trip, which wraps
//     ErrFraudGuard), checked with errors.Is/As: the gateway's refusal table
//     and the API's error table map them to the wire, so an implementation
//     must refuse the same things with the same errors. Any change may
//     also fail with ErrUnavailable: the books cannot make it durable (a
//     failed write; for a cluster, no quorum). Such a change may or may not
//     have taken effect — the retry of an idempotent one finds out — and
//     from then on Err is non-nil and every change is refused (fail
//     closed) until the books are whole again (for *Ledger, a restart).
//     *Ledger's lookups go on answering meanwhile.
//   - An implementation never calls back into its caller, so a caller may
//     hold its own locks across a call (the gateway holds a call's mutex
//     across Step).
type Books interface {
	// Calls: one call's money, from authorization to its CDR. Times are
	// the caller's clock.

	// OpenCall records a call being authorized and holds its first
	// increment (a minute of c.Plan's pool while it lasts, else the
	// connection fee and the first increment on credits; nothing for a
	// Free call). Idempotent on c.ID while the call is up: the same id,
	// org and number answer the increment it holds. Durable, except with
	// c.Unsynced: then it returns once queued, and the call is ordered
	// before its answer, so a crash loses at most a call that cost nothing.
	// Refusals: ErrInvalid (bad call, or the id of another call up),
	// ErrCallEnded (the id has a CDR), ErrUnknownOrg,
	// ErrInsufficientCredit, ErrPoolExhausted, *Trip (fraud guard),
	// ErrUnavailable (also for a start no CDR key can hold, wrapping
	// ErrTimeRange).
	OpenCall(c Call, at time.Time) (Increment, error)
	// AnswerDialog marks the call answered, from when its increments are
	// charged, and stores the SIP side's dialog record (opaque JSON, may be
	// nil) in the same durable change. Idempotent: a call answered already
	// keeps its first answer. Refusals: ErrInvalid (not JSON),
	// ErrUnknownCall, ErrCallEnded.
	AnswerDialog(callID string, at time.Time, dialog json.RawMessage) error
	// Step is the boundary after increment n: commit n and hold n+1, in one
	// durable change. Idempotent on (callID, n): once n+1 is held it is
	// answered again. If n+1 cannot be held, n is still committed (durable)
	// and the error says the call must end now: ErrInsufficientCredit,
	// ErrPoolExhausted or *Trip (spend limit). Other refusals: ErrInvalid
	// (not answered, free, or out of sequence), ErrUnknownCall,
	// ErrCallEnded.
	Step(callID string, n int, at time.Time) (Increment, error)
	// StepAlive is Step that also records the call's Liveness (its last
	// proof of life, never moving back, and its session's expiry): the
	// increments committed after the proof of life stay refundable until
	// the next Step moves it on (liveness.go). Same idempotency and
	// refusals as Step. A call left up by a process that stopped, whose
	// Expires had passed when the next one starts, is settled at Expires,
	// billed to Alive, reason ReasonSessionExpired.
	StepAlive(callID string, n int, at time.Time, live Liveness) (Increment, error)
	// CloseCall ends the call and returns its CDR: an answered call pays
	// its open increment whole, an unanswered one costs nothing. Durable.
	// With end.BillTo set (not before the Alive of its latest StepAlive)
	// it is billed to that last proof of life: increments that started
	// after it are given back (a refund entry for credits, minutes to
	// their pool; the open one is released), and Funded − Debited =
	// Balance holds with Debited net of refunds.
	// Idempotent: closing an ended call, however long ago, returns its CDR
	// again. Refusals: ErrUnknownCall (never opened).
	CloseCall(callID string, end CallEnd) (CDR, error)
	// UpdateDialog replaces an answered call's dialog record while the call
	// is up. Durable; idempotent (the last record stays). Refusals:
	// ErrInvalid (not JSON, or not answered), ErrUnknownCall, ErrCallEnded
	// (so a late update cannot bring back a forgotten record).
	UpdateDialog(callID string, dialog json.RawMessage) error
	// Dialogs are the dialog records the last run left: calls it had up
	// (settled since) and calls whose BYEs it did not confirm.
	Dialogs() []Dialog
	// ForgetDialog drops a call's dialog record once its legs are ended.
	// Not durable: lost in a crash, it costs BYEs answered 481. Idempotent.
	// Must come after the operation that wrote the record returned.
	ForgetDialog(callID string) error
	// FraudTripped queues a fraud_guard notification for a trip, at most one
	// per org and guard an hour (durable when it queues one). An unknown
	// org is no error.
	FraudTripped(tr *Trip, at time.Time) error

	// Lookups: answered from applied state, without waiting for the disk.

	// Org returns the org. Refusals: ErrUnknownOrg.
	Org(id string) (Org, error)
	// User returns a user of an org.
	User(org, id string) (User, bool)
	// UserByNumber finds who owns an E.164 number (digits, no '+').
	UserByNumber(e164 string) (User, bool)
	// TollFreeOwner finds the org a toll-free number belongs to.
	TollFreeOwner(number string) (TollFree, bool)
	// TollFreeNumbers lists an org's toll-free numbers, sorted.
	TollFreeNumbers(org string) []TollFree
	// OrgIDs lists every org's id, sorted.
	OrgIDs() []string
	// UsersOf lists an org's users, sorted by id.
	UsersOf(org string) []User
	// Trunks lists every trunk, sorted by id.
	Trunks() []Trunk
	// PoolsLeft is the minutes each pool (by plan name) has left in the
	// org's month containing at: a snapshot for rating's decision, which
	// OpenCall and Step decide again. Refusals: ErrUnknownOrg.
	PoolsLeft(org string, at time.Time) (map[string]int, error)
	// Pools returns the org's pools of the month containing at, one per
	// plan. Refusals: ErrUnknownOrg. (A cluster node's reads the pools'
	// totals and used minutes from etcd, for the admin API: ErrUnavailable
	// when etcd cannot be read; the call path uses PoolsLeft.)
	Pools(org string, at time.Time) ([]Pool, error)
	// PendingPurchaseOf is the id of the org's pending auto-recharge
	// purchase, "" if none.
	PendingPurchaseOf(org string) string
	// Money is every org's money at one instant, for the per-org gauges.
	Money() []OrgMoney

	// Changes from the admin API. Each is durable when it returns.

	// CreateOrg adds an org with a zero balance and returns it as stored.
	// Not idempotent: a second create is ErrOrgExists. Other refusals:
	// ErrInvalid.
	CreateOrg(o Org) (Org, error)
	// FundAcrossRegions adds a one-time funding; incident, when not empty,
	// allows it for an org whose region differs from its billing region.
	// Idempotent per (org, key): the same key and amount return the first
	// entry with Replayed set; another amount is ErrDuplicateFunding.
	// Other refusals: ErrInvalid, ErrBelowMinimum, ErrUnknownOrg,
	// ErrRegionMismatch.
	FundAcrossRegions(org string, amount decimal.Decimal, key, incident string) (Entry, error)
	// SetBlockPremium, SetContacts and SetFraudGuard replace one setting
	// and return the org. Idempotent. Refusals: ErrUnknownOrg, ErrInvalid.
	SetBlockPremium(org string, block bool) (Org, error)
	SetContacts(org string, c Contacts) (Org, error)
	SetFraudGuard(org string, fg FraudGuard) (Org, error)
	// SetAutoRecharge replaces the auto-recharge setting (clearing a
	// suspension) and, if the balance is below the threshold and no
	// purchase is pending, starts one in the same change. Repeating it
	// never starts a second purchase. Refusals: ErrInvalid,
	// ErrBelowMinimum, ErrRegionMismatch, ErrUnknownOrg.
	SetAutoRecharge(org string, ar AutoRecharge) (AutoRecharge, error)
	// PutUser creates or replaces a user; the org's pools of this month
	// follow its licenses. Idempotent. Refusals: ErrInvalid,
	// ErrUnknownOrg, ErrNumberTaken.
	PutUser(u User) error
	// PutTollFree assigns a toll-free number to an org or moves its
	// delivery trunk. Idempotent. Refusals: ErrInvalid, ErrUnknownOrg,
	// ErrNumberTaken.
	PutTollFree(tf TollFree) error
	// DeleteTollFree takes a number away from its org; false if the org did
	// not have it. Of concurrent deletes of one number exactly one answers
	// true. Refusals: ErrInUse (a call to it is up; nothing changes).
	DeleteTollFree(org, number string) (bool, error)
	// DeleteUser removes a user, its numbers and licenses (this month's
	// pools follow); false if there was none; one of concurrent deletes
	// answers true. Refusals: ErrUnknownOrg, ErrInUse (a call of the user
	// is up; nothing changes).
	DeleteUser(org, id string) (bool, error)
	// DeleteTrunk removes a trunk; false if there was none. Refusals:
	// ErrInUse (it delivers a toll-free number; nothing changes). Calls up
	// on it are the caller's to check first.
	DeleteTrunk(id string) (bool, error)
	// PutTrunk creates or replaces a trunk. Idempotent. Refusals:
	// ErrInvalid, ErrUnknownOrg.
	PutTrunk(tr Trunk) error
	// PutDeck replaces the stored rate deck (validated by rating first).
	PutDeck(csv []byte) error

	// History: durable records, read from the books' store.

	// EachCDR streams an org's CDRs whose start is in [from, to) in start
	// order (zero times: unbounded); it sees at least every CDR whose
	// CloseCall returned. fn's error stops it and is returned. Refusals:
	// ErrTimeRange. An unknown org has no CDRs.
	EachCDR(org string, from, to time.Time, fn func(*CDR) error) error
	// Transactions returns up to limit of an org's balance movements with
	// Seq above after, oldest first; after = math.MaxUint64 is an empty
	// page. An unknown org has none.
	Transactions(org string, after uint64, limit int) ([]Entry, error)
	// Advise computes the org's auto-recharge advice at now from its CDRs.
	// Refusals: ErrUnknownOrg.
	Advise(org string, now time.Time) (Advice, error)

	// Err is non-nil (wrapping ErrUnavailable) once the books cannot make
	// changes durable; readiness reports it.
	Err() error
}

// *Ledger is the Books of one process.
var _ Books = (*Ledger)(nil)

// Package panics contains a panic to the one request, call or job it
// happened in. Neither fasthttp nor sipgo recovers a panic in a handler, and
// a panic in any goroutine ends the whole process: every call of every org
// with it. So every goroutine that runs on behalf of a client (an HTTP
// handler, a streamed export, a SIP handler, a call's timers and BYEs) and
// every background job (a payment, a notification) defers Recover at its
// top, and what recovers is logged with its stack and counted in
// creditgate_panics_total{where}.
//
// A contained panic is a bug, never a way to refuse input: input is
// refused with a clear error before it can panic. Containment only makes
// sure that a bug costs one request, not the process.
package panics

import (
	"fmt"
	"log/slog"
	"runtime/debug"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// Where names the kind of goroutine a panic was contained in: a small,
// closed set, so it can be a metric label.
type Where string

const (
	HTTP       Where = "http"        // an admin API handler
	HTTPStream Where = "http_stream" // the producer of a streamed response
	SIP        Where = "sip"         // a SIP request handler
	Call       Where = "call"        // a call's metering timer, BYEs and teardown
	Payer      Where = "payer"       // one auto-recharge payment
	Notify     Where = "notify"      // one notification or low-balance check
)

var all = []Where{HTTP, HTTPStream, SIP, Call, Payer, Notify}

// total is the process's one count of contained panics. A package variable
// because a panic can happen anywhere and the count is one fact about the
// process; Register exposes it in the registry main builds.
var total = prometheus.NewCounterVec(prometheus.CounterOpts{
	Name: "creditgate_panics_total",
	Help: "Panics contained to the request, call or job they happened in, by where.",
}, []string{"where"})

func init() {
	for _, w := range all {
		total.WithLabelValues(string(w))
	}
}

// Register adds creditgate_panics_total to reg. Registering it in a second
// registry (tests build many) is fine; in the same one twice is not.
func Register(reg prometheus.Registerer) {
	if reg == nil {
		return
	}
	if err := reg.Register(total); err != nil {
		if _, dup := err.(prometheus.AlreadyRegisteredError); !dup {
			panic(err)
		}
	}
}

// Count is how many panics were contained at where so far (for tests and
// the log line at exit).
func Count(where Where) float64 {
	var m dto.Metric
	if err := total.WithLabelValues(string(where)).Write(&m); err != nil {
		return 0
	}
	return m.GetCounter().GetValue()
}

// Recover must be deferred directly (defer panics.Recover(...)): it stops a
// panic in the deferring goroutine, logs it with its stack and the given
// attributes at error level, counts it, and then runs then (if not nil) to
// finish what the panicking code left half done — answer the request, end
// the call. A panic in then is contained too; it is counted once more.
func Recover(log *slog.Logger, where Where, then func(), attrs ...any) {
	r := recover()
	if r == nil {
		return
	}
	contained(log, where, r, attrs)
	if then != nil {
		func() {
			defer func() {
				if r := recover(); r != nil {
					contained(log, where, r, append(attrs, "while", "cleaning up after a panic"))
				}
			}()
			then()
		}()
	}
}

func contained(log *slog.Logger, where Where, r any, attrs []any) {
	total.WithLabelValues(string(where)).Inc()
	if log == nil {
		log = slog.Default()
	}
	log.Error("panic contained", append([]any{"where", string(where), "panic", fmt.Sprint(r),
		"stack", string(debug.Stack())}, attrs...)...)
}

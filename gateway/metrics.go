package gateway

import (
	"github.com/creditgate/creditgate/ledger"
	"github.com/creditgate/creditgate/rating"
	"github.com/prometheus/client_golang/prometheus"
)

// metrics of the gateway; label values are closed sets (see refusals).
type metrics struct {
	authorizations *prometheus.CounterVec
	active         prometheus.Gauge
	setup          prometheus.Histogram
	exhausted      prometheus.Counter
	leftCallByes   *prometheus.CounterVec
	fraudTrips     *prometheus.CounterVec
	dropped        *prometheus.CounterVec

	connsOpen       *prometheus.GaugeVec   // by listener: sip_tcp, sip_tls
	connsRefused    *prometheus.CounterVec // by reason: max_connections, fd_limit, per_source
	connsIdleClosed prometheus.Counter
	acceptErrors    *prometheus.CounterVec // by listener: http, sip_tcp, sip_tls

	ended  *prometheus.CounterVec // by reason: ledger.Reasons
	probes *prometheus.CounterVec // by method (OPTIONS, UPDATE) and result (ok, gone, no_answer)
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		authorizations: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "creditgate_authorizations_total",
			Help: "Call authorization decisions, by result (allowed, refused) and reason."}, []string{"result", "reason"}),
		active: prometheus.NewGauge(prometheus.GaugeOpts{Name: "creditgate_calls_active",
			Help: "Calls authorized and not yet ended (ringing or answered)."}),
		setup: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "creditgate_call_setup_seconds",
			Help:    "Time from an INVITE arriving to the INVITE leaving for the carrier.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14)}),
		exhausted: prometheus.NewCounter(prometheus.CounterOpts{Name: "creditgate_credit_exhausted_teardowns_total",
			Help: "Calls ended by the gateway because the org's credit ran out."}),
		leftCallByes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "creditgate_restart_byes_total",
			Help: "BYEs sent on start to the legs of calls the last run left up, by leg (caller, carrier) and result (ok; gone: 481/408; failed)."},
			[]string{"leg", "result"}),
		fraudTrips: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "creditgate_fraud_guard_trips_total",
			Help: "Calls refused or ended by an org's fraud guard, by guard."}, []string{"guard"}),
	}
	m.dropped = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "creditgate_sip_dropped_total",
		Help: "SIP datagrams dropped unparsed, by reason: not_sip, oversized, malformed (did not parse; a UDP request that can be matched gets a stateless 400)."}, []string{"reason"})
	for _, r := range []string{dropNotSIP, dropOversized, dropMalformed} {
		m.dropped.WithLabelValues(r)
	}
	m.connsOpen = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "creditgate_sip_connections_open",
		Help: "SIP TCP/TLS connections accepted and open now, by listener (sip_tcp, sip_tls)."}, []string{"listener"})
	m.connsRefused = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "creditgate_sip_connections_refused_total",
		Help: "SIP TCP/TLS connections closed as soon as accepted, by reason: max_connections, fd_limit (the cap derived from NOFILE), per_source."},
		[]string{"reason"})
	m.connsIdleClosed = prometheus.NewCounter(prometheus.CounterOpts{Name: "creditgate_sip_connections_idle_closed_total",
		Help: "SIP TCP/TLS connections closed after sip.connection_idle_timeout without a byte, carrying no call."})
	m.acceptErrors = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "creditgate_accept_errors_total",
		Help: "Temporary Accept errors (EMFILE, ENFILE, ECONNABORTED, …) retried with backoff, by listener: http, sip_tcp, sip_tls."},
		[]string{"listener"})
	for _, l := range []string{ListenerSIPTCP, ListenerSIPTLS} {
		m.connsOpen.WithLabelValues(l)
	}
	for _, r := range []string{refusedMaxConns, refusedFDLimit, refusedPerSource} {
		m.connsRefused.WithLabelValues(r)
	}
	for _, l := range []string{ListenerHTTP, ListenerSIPTCP, ListenerSIPTLS} {
		m.acceptErrors.WithLabelValues(l)
	}
	m.ended = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "creditgate_calls_ended_total",
		Help: "Calls ended, by CDR disconnect reason (session_expired, leg_lost, max_duration, max_charge, caller_hangup, …)."}, []string{"reason"})
	for _, r := range ledger.Reasons {
		m.ended.WithLabelValues(string(r))
	}
	m.probes = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "creditgate_liveness_probes_total",
		Help: "In-dialog requests the gateway sent to prove a leg up: OPTIONS keepalives and UPDATE session refreshes, by result (ok; gone: 481/408; no_answer)."},
		[]string{"method", "result"})
	for _, method := range []string{"OPTIONS", "UPDATE"} {
		for _, r := range []string{"ok", "gone", "no_answer"} {
			m.probes.WithLabelValues(method, r)
		}
	}
	for _, gd := range ledger.Guards {
		m.fraudTrips.WithLabelValues(gd)
	}
	// Every label value exists from the start, at zero, so a rate() or an
	// alert sees the series before its first increment.
	for _, r := range refusals {
		m.authorizations.WithLabelValues("refused", r.r.reason)
	}
	m.authorizations.WithLabelValues("refused", internalRefusal.reason)
	for _, src := range []rating.Source{rating.SourcePool, rating.SourcePoolThenCredits, rating.SourceCredits} {
		m.authorizations.WithLabelValues("allowed", string(src))
	}
	m.authorizations.WithLabelValues("allowed", "emergency")
	for _, leg := range []string{"caller", "carrier"} {
		for _, r := range []string{"ok", "gone", "failed"} {
			m.leftCallByes.WithLabelValues(leg, r)
		}
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.authorizations, m.active, m.setup, m.exhausted, m.leftCallByes, m.fraudTrips, m.dropped,
			m.connsOpen, m.connsRefused, m.connsIdleClosed, m.acceptErrors, m.ended, m.probes} {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}

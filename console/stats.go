// The operator's live figures, from the same metrics /metrics serves
// (README, Metrics): calls up, calls per second, refusals by reason,
// fraud-guard trips.

package console

import (
	"sort"
	"strconv"
	"sync"
	"time"

	dto "github.com/prometheus/client_model/go"
)

type counted struct {
	Label string
	N     int64
}

type liveStats struct {
	Available  bool
	CallsUp    int64
	PerSecond  string // "" until two samples a second apart
	Allowed    int64
	Refusals   []counted
	FraudTrips []counted
}

// rateSampler keeps the last sample of allowed authorizations, so that two
// looks at the live page a second or more apart give calls per second.
// Guarded by mu (alone; never held across Gather).
type rateSampler struct {
	mu      sync.Mutex
	at      time.Time
	allowed int64
	rate    string
}

// observe records allowed at now and answers the rate over the last
// interval of a second or more.
func (r *rateSampler) observe(now time.Time, allowed int64) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.at.IsZero() || now.Before(r.at) || allowed < r.allowed {
		r.at, r.allowed = now, allowed
		return r.rate
	}
	if dt := now.Sub(r.at); dt >= time.Second {
		per := float64(allowed-r.allowed) / dt.Seconds()
		r.rate = formatRate(per)
		r.at, r.allowed = now, allowed
	}
	return r.rate
}

// formatRate is calls per second to one decimal: a display figure, not
// money.
func formatRate(per float64) string { return strconv.FormatFloat(per, 'f', 1, 64) }

func (c *Console) liveStats() liveStats {
	var st liveStats
	if c.cfg.Gatherer == nil {
		return st
	}
	mfs, err := c.cfg.Gatherer.Gather()
	if err != nil && len(mfs) == 0 {
		c.cfg.Log.Warn("console: metrics unavailable", "error", err)
		return st
	}
	st.Available = true
	refused := map[string]int64{}
	trips := map[string]int64{}
	for _, mf := range mfs {
		switch mf.GetName() {
		case "creditgate_calls_active":
			for _, m := range mf.GetMetric() {
				st.CallsUp += int64(m.GetGauge().GetValue())
			}
		case "creditgate_authorizations_total":
			for _, m := range mf.GetMetric() {
				n := int64(m.GetCounter().GetValue())
				switch label(m, "result") {
				case "allowed":
					st.Allowed += n
				case "refused":
					refused[label(m, "reason")] += n
				}
			}
		case "creditgate_fraud_guard_trips_total":
			for _, m := range mf.GetMetric() {
				trips[label(m, "guard")] += int64(m.GetCounter().GetValue())
			}
		}
	}
	st.Refusals, st.FraudTrips = sorted(refused), sorted(trips)
	st.PerSecond = c.rates.observe(c.cfg.Now(), st.Allowed)
	return st
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

// sorted is the counts above zero, most first.
func sorted(m map[string]int64) []counted {
	out := []counted{}
	for k, v := range m {
		if v > 0 {
			out = append(out, counted{k, v})
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].N != out[j].N {
			return out[i].N > out[j].N
		}
		return out[i].Label < out[j].Label
	})
	return out
}

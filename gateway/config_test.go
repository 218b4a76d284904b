package gateway

import (
	"strings"
	"testing"

	"github.com/creditgate/creditgate/internal/clock"
	"github.com/creditgate/creditgate/rating"
)

// TestNewRefusesConfigWithoutDefaults: the gateway does not default its
// configuration (configs.Default() does); a zero that would be a bug is a
// clear error from New naming the field, not a silent default.
func TestNewRefusesConfigWithoutDefaults(t *testing.T) {
	for _, tc := range []struct {
		field string
		clear func(*Config)
	}{
		{"RingTimeout", func(c *Config) { c.RingTimeout = 0 }},
		{"ByeTimeout", func(c *Config) { c.ByeTimeout = 0 }},
		{"MaxCalls", func(c *Config) { c.MaxCalls = 0 }},
		{"FailoverTimeout", func(c *Config) { c.FailoverTimeout = 0 }},
		{"MaxPending", func(c *Config) { c.MaxPending = 0 }},
		{"Catalog", func(c *Config) { c.Catalog = nil }},
	} {
		t.Run(tc.field, func(t *testing.T) {
			cfg := testConfig()
			tc.clear(&cfg)
			_, err := New(cfg, nil, rating.SampleDeck(), clock.Real{}, nil, quietLog())
			if err == nil || !strings.Contains(err.Error(), tc.field) {
				t.Fatalf("New with no %s: %v, want an error naming it", tc.field, err)
			}
		})
	}
}

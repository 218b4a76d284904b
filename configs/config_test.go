package configs

import (
	"strings"
	"testing"
)

func TestExampleIsTheDefaults(t *testing.T) {
	c, err := Parse(Example)
	if err != nil {
		t.Fatalf("example does not parse: %v", err)
	}
	if c != Default() {
		t.Fatalf("example %+v differs from defaults %+v", c, Default())
	}
	if err := Default().Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestParseRefuses(t *testing.T) {
	cases := []struct{ name, yaml, key string }{
		{"unknown key", "sip:\n  lisen: 1.2.3.4:5060\n", "lisen"},
		{"bad listen", "sip:\n  listen: nope\n", "sip.listen"},
		{"bad duration", "sip:\n  ring_timeout: forever\n", "line 2"},
		{"ring timeout too long", "sip:\n  ring_timeout: 1h\n", "sip.ring_timeout"},
		{"zero max calls", "sip:\n  max_calls: 0\n", "sip.max_calls"},
		{"short token", "http:\n  admin_token: abc\n", "http.admin_token"},
		{"negative minimum", "funding:\n  minimum: \"-5\"\n", "funding.minimum"},
		{"too precise minimum", "funding:\n  minimum: \"50.001\"\n", "funding.minimum"},
		{"bad level", "log:\n  level: loud\n", "log.level"},
		{"not yaml", "sip: [", "yaml"},
		{"empty data dir", "data_dir: \"\"\n", "data_dir"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.yaml))
			if err == nil || !strings.Contains(err.Error(), tc.key) {
				t.Fatalf("err = %v, want one naming %q", err, tc.key)
			}
		})
	}
}

func FuzzParse(f *testing.F) {
	f.Add(string(Example))
	f.Add("sip:\n  listen: 127.0.0.1:5060\n")
	f.Fuzz(func(t *testing.T, s string) {
		c, err := Parse([]byte(s))
		if err == nil {
			if err := c.Validate(); err != nil {
				t.Fatalf("Parse accepted a config Validate refuses: %v", err)
			}
		}
	})
}

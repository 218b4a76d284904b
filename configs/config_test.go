package configs

import (
	"reflect"

	"github.com/creditgate/creditgate/ledger"
	"strings"
	"testing"
)

func TestExampleIsTheDefaults(t *testing.T) {
	c, err := Parse(Example)
	if err != nil {
		t.Fatalf("example does not parse: %v", err)
	}
	if !reflect.DeepEqual(c, Default()) {
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
		{"tls without a certificate", "sip:\n  tls_listen: 127.0.0.1:5061\n", "sip.tls_cert"},
		{"tls listen not host:port", "sip:\n  tls_listen: 5061\n  tls_cert: c.pem\n  tls_key: k.pem\n", "sip.tls_listen"},
		{"negative rate per source", "sip:\n  rate_per_source: -1\n", "sip.rate_per_source"},
		{"trusted proxy by name", "sip:\n  trusted_proxies: [10.0.0.1, kamailio.example]\n", "sip.trusted_proxies[1]"},
		{"trusted proxy port 0", "sip:\n  trusted_proxies: [\"10.0.0.1:0\"]\n", "sip.trusted_proxies[0]"},
		{"source header with a space", "sip:\n  source_header: \"X AUTH\"\n", "sip.source_header"},
		{"empty source header", "sip:\n  source_header: \"\"\n", "sip.source_header"},
		{"zero max calls", "sip:\n  max_calls: 0\n", "sip.max_calls"},
		{"admin tls without key", "http:\n  tls_cert: c.pem\n", "http.tls_cert"},
		{"short token", "http:\n  admin_token: abc\n", "http.admin_token"},
		{"console session ttl", "http:\n  console:\n    session_ttl: 10s\n", "http.console.session_ttl"},
		{"console max sessions", "http:\n  console:\n    max_sessions: 0\n", "http.console.max_sessions"},
		{"negative minimum", "funding:\n  minimum: \"-5\"\n", "funding.minimum"},
		{"too precise minimum", "funding:\n  minimum: \"50.001\"\n", "funding.minimum"},
		{"bad level", "log:\n  level: loud\n", "log.level"},
		{"stripe key twice", "payments:\n  stripe_api_key: sk_x\n  stripe_api_key_file: k\n", "payments.stripe_api_key_file"},
		{"stripe url not http", "payments:\n  stripe_base_url: ftp://x\n", "payments.stripe_base_url"},
		{"zero attempts", "payments:\n  max_attempts: 0\n", "payments.max_attempts"},
		{"max backoff below first", "payments:\n  retry_backoff: 1m\n  max_backoff: 1s\n", "payments.max_backoff"},
		{"smtp without from", "notify:\n  smtp:\n    host: mail.example\n", "notify.smtp.from"},
		{"smtp from with a name", "notify:\n  smtp:\n    host: mail.example\n    from: \"Billing <b@x.example>\"\n", "notify.smtp.from"},
		{"smtp tls unknown", "notify:\n  smtp:\n    tls: sometimes\n", "notify.smtp.tls"},
		{"smtp port", "notify:\n  smtp:\n    host: mail.example\n    from: b@x.example\n    port: 70000\n", "notify.smtp.port"},
		{"smtp password twice", "notify:\n  smtp:\n    password: a\n    password_file: b\n", "notify.smtp.password_file"},
		{"notify backoff", "notify:\n  retry_backoff: 0s\n", "notify.retry_backoff"},
		{"high-risk prefix with +", "fraud:\n  high_risk_prefixes: [\"+252\"]\n", "fraud.high_risk_prefixes[0]"},
		{"high-risk prefix empty", "fraud:\n  high_risk_prefixes: [\"\"]\n", "fraud.high_risk_prefixes[0]"},
		{"low balance horizon", "notify:\n  low_balance_horizon: 1m\n", "notify.low_balance_horizon"},
		{"not yaml", "sip: [", "yaml"},
		{"empty data dir", "data_dir: \"\"\n", "data_dir"},
		{"premium in a pool", "catalog:\n  pools:\n    - {name: x, minutes_per_license: 1, licenses: [domestic_calling_plan], trunk: customer, destinations: any, types: [premium]}\n", "catalog.pools[0].types"},
		{"unknown zone A country", "catalog:\n  zone_a: [GB, XX]\n", "catalog.zone_a"},
		{"zone A not a list", "catalog:\n  zone_a: GB\n", "line 2"},
		{"float toll-free rate", "catalog:\n  inbound_toll_free:\n    rates: {US: 0.5e-1}\n", "catalog.inbound_toll_free.rates.US"},
		{"unknown catalog key", "catalog:\n  bonus: 1\n", "bonus"},
		{"etcd not a URL", "cluster:\n  etcd: [\"127.0.0.1:2379\"]\n", "cluster.etcd[0]"},
		{"etcd https without a CA", "cluster:\n  etcd: [\"https://10.0.0.1:2379\"]\n", "cluster.tls_ca"},
		{"etcd cert without key", "cluster:\n  etcd: [\"http://127.0.0.1:2379\"]\n  tls_cert: c.pem\n", "cluster.tls_cert"},
		{"node id with a slash", "cluster:\n  etcd: [\"http://127.0.0.1:2379\"]\n  node_id: a/b\n", "cluster.node_id"},
		{"node id cluster", "cluster:\n  etcd: [\"http://127.0.0.1:2379\"]\n  node_id: cluster\n", "cluster.node_id"},
		{"prefix without slashes", "cluster:\n  etcd: [\"http://127.0.0.1:2379\"]\n  prefix: cg\n", "cluster.prefix"},
		{"lease ttl fraction", "cluster:\n  etcd: [\"http://127.0.0.1:2379\"]\n  lease_ttl: 2500ms\n", "cluster.lease_ttl"},
		{"margin over ttl", "cluster:\n  etcd: [\"http://127.0.0.1:2379\"]\n  lease_margin: 5s\n", "cluster.lease_margin"},
		{"keepalive too slow", "cluster:\n  etcd: [\"http://127.0.0.1:2379\"]\n  keepalive_every: 4s\n", "cluster.keepalive_every"},
		{"advertise without a port", "cluster:\n  etcd: [\"http://127.0.0.1:2379\"]\n  advertise_http: http://10.0.0.1\n", "cluster.advertise_http"},
		{"advertise with a path", "cluster:\n  etcd: [\"http://127.0.0.1:2379\"]\n  advertise_http: http://10.0.0.1:8080/v1\n", "cluster.advertise_http"},
		{"advertise not http", "cluster:\n  etcd: [\"http://127.0.0.1:2379\"]\n  advertise_http: 10.0.0.1:8080\n", "cluster.advertise_http"},
		{"peer timeout zero", "cluster:\n  etcd: [\"http://127.0.0.1:2379\"]\n  peer_timeout: 0s\n", "cluster.peer_timeout"},
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

// TestCatalogOverride: lists given replace the built-in ones whole; toll-free
// rates merge country by country; keys not given keep the built-in values.
func TestCatalogOverride(t *testing.T) {
	c, err := Parse([]byte(`catalog:
  pools:
    - {name: domestic, minutes_per_license: 1200, licenses: [domestic_calling_plan], trunk: customer, destinations: domestic, types: [geographic]}
  zone_a: [GB]
  inbound_toll_free:
    rates: {US: "0.0250"}
`))
	if err != nil {
		t.Fatal(err)
	}
	cat := c.Catalog
	if len(cat.Pools) != 1 || cat.Pools[0].MinutesPerLicense != 1200 || !reflect.DeepEqual(cat.ZoneA, []string{"GB"}) {
		t.Fatalf("catalog %+v", cat)
	}
	if cat.InboundTollFree.Rates["US"] != "0.0250" || cat.InboundTollFree.Rates["GB"] != "0.0380" || cat.InboundTollFree.FirstIncrement != 60 {
		t.Fatalf("toll-free rates %+v", cat.InboundTollFree)
	}
	plans := ledger.PlansOf(&cat)
	if len(plans) != 1 || plans[0].Name != "domestic" || plans[0].Minutes != 1200 || !reflect.DeepEqual(plans[0].Licenses, []string{"domestic_calling_plan"}) {
		t.Fatalf("ledger plans %+v", plans)
	}
	// The built-in catalogue was not changed by the override.
	if d := Default().Catalog; len(d.Pools) != 3 || d.InboundTollFree.Rates["US"] != "0.0190" {
		t.Fatalf("defaults changed: %+v", d)
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

// TestTrustedProxiesAccepted: the forms a trunk address takes are taken
// for a trusted proxy too, and reach the config as written.
func TestTrustedProxiesAccepted(t *testing.T) {
	c, err := Parse([]byte("sip:\n  trusted_proxies: [10.0.0.0/8, 192.0.2.5, \"192.0.2.6:5060\", \"[2001:db8::5]:5060\", 2001:db8::/64]\n  source_header: X-Src\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"10.0.0.0/8", "192.0.2.5", "192.0.2.6:5060", "[2001:db8::5]:5060", "2001:db8::/64"}
	if !reflect.DeepEqual(c.SIP.TrustedProxies, want) || c.SIP.SourceHeader != "X-Src" {
		t.Fatalf("trusted_proxies %q, source_header %q", c.SIP.TrustedProxies, c.SIP.SourceHeader)
	}
}

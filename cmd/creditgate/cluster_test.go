package main

import (
	"net"
	"strings"
	"testing"

	"github.com/creditgate/creditgate/configs"
)

// TestAdminURL: the URL a node registers for its peers is
// cluster.advertise_http when set, else http.listen's host with the port
// the listener got (https with a certificate); a listen address peers
// cannot reach is refused, naming the key that fixes it.
func TestAdminURL(t *testing.T) {
	got := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 18081}
	cases := []struct {
		name, listen, advertise, cert string
		want, wantErr                 string
	}{
		{"listen address", "127.0.0.1:0", "", "", "http://127.0.0.1:18081", ""},
		{"https", "10.0.0.5:8443", "", "cert.pem", "https://10.0.0.5:18081", ""},
		{"ipv6", "[::1]:8080", "", "", "http://[::1]:18081", ""},
		{"host name", "node1.example:8080", "", "", "http://node1.example:18081", ""},
		{"advertised", "0.0.0.0:8080", "http://10.0.0.5:8080/", "", "http://10.0.0.5:8080", ""},
		{"every v4 address", "0.0.0.0:8080", "", "", "", "cluster.advertise_http"},
		{"every v6 address", "[::]:8080", "", "", "", "cluster.advertise_http"},
		{"no host", ":8080", "", "", "", "cluster.advertise_http"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := configs.Default()
			cfg.HTTP.Listen, cfg.HTTP.TLSCert, cfg.Cluster.AdvertiseHTTP = tc.listen, tc.cert, tc.advertise
			u, err := adminURL(cfg, got)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("adminURL = %q, %v; want an error naming %s", u, err, tc.wantErr)
				}
				return
			}
			if err != nil || u != tc.want {
				t.Fatalf("adminURL = %q, %v; want %q", u, err, tc.want)
			}
		})
	}
}

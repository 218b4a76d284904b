package api

import (
	"encoding/json"
	"regexp"
	"slices"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

var paramRE = regexp.MustCompile(`\{[^}]+\}`)

// key is the route as "METHOD /pattern" with each {name} written "*", as
// the tests compare routes with the OpenAPI document's paths.
func (r route) key() string { return r.method + " " + paramRE.ReplaceAllString(r.pattern, "*") }

// documented returns "METHOD /pattern" for every operation in the OpenAPI
// document, path parameters written as the router's "*".
func documented(t *testing.T) (ops []string, paths map[string]bool) {
	t.Helper()
	var doc struct {
		OpenAPI string                    `yaml:"openapi"`
		Paths   map[string]map[string]any `yaml:"paths"`
	}
	if err := yaml.Unmarshal(OpenAPI, &doc); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(doc.OpenAPI, "3.") {
		t.Fatalf("openapi %q", doc.OpenAPI)
	}
	paths = map[string]bool{}
	for p, item := range doc.Paths {
		paths[p] = true
		for m, op := range item {
			if m == "parameters" {
				continue
			}
			o, _ := op.(map[string]any)
			if o["summary"] == nil || o["responses"] == nil {
				t.Errorf("%s %s: no summary or responses", m, p)
			}
			ops = append(ops, strings.ToUpper(m)+" "+paramRE.ReplaceAllString(p, "*"))
		}
	}
	slices.Sort(ops)
	return ops, paths
}

func TestOpenAPICoversEveryRoute(t *testing.T) {
	ops, paths := documented(t)
	var served []string
	for _, r := range routes {
		served = append(served, r.key())
	}
	for _, open := range []string{"/metrics", "/healthz", "/readyz"} {
		served = append(served, "GET "+open)
		if !paths[open] {
			t.Errorf("%s not documented", open)
		}
	}
	slices.Sort(served)
	for _, s := range served {
		if !slices.Contains(ops, s) {
			t.Errorf("route %s is not in openapi.yaml", s)
		}
	}
	for _, o := range ops {
		if !slices.Contains(served, o) {
			t.Errorf("openapi.yaml documents %s, which no route serves", o)
		}
	}
}

// Every documented operation answers through the running server: with an
// empty body it may be refused, but never as an unknown path or method.
func TestOpenAPIRoutesAnswer(t *testing.T) {
	h := setup(t)
	ops, _ := documented(t)
	for _, op := range ops {
		method, pattern, _ := strings.Cut(op, " ")
		path := strings.ReplaceAll(pattern, "*", "acme")
		r := h.do(method, path, "{}")
		var e struct {
			Error struct{ Code, Message string }
		}
		_ = json.Unmarshal(r.body, &e)
		if r.status == 405 || (r.status == 404 && e.Error.Message == errNotFound.Error()) {
			t.Errorf("%s %s: %d %s — the router does not know it", method, path, r.status, r.body)
		}
		if r.status >= 500 {
			t.Errorf("%s %s: %d %s", method, path, r.status, r.body)
		}
	}
	r := h.mustDo("GET", "/v1/openapi.yaml", "", 200)
	if string(r.body) != string(OpenAPI) || r.header.Get("Content-Type") != "application/yaml" {
		t.Fatal("the served document is not the embedded one")
	}
}

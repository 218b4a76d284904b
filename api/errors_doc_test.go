package api

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// answerable is every (status, code) the API can answer an error with:
// the rows of httpErrors and lookupError's answer for an error no row maps.
func answerable() map[string]bool {
	out := map[string]bool{}
	for _, x := range httpErrors {
		out[fmt.Sprintf("%d %s", x.e.status, x.e.code)] = true
	}
	e := lookupError(errors.New("an error no row maps"))
	out[fmt.Sprintf("%d %s", e.status, e.code)] = true
	return out
}

// TestHTTPErrorTableMatchesREADME: the README's `| status | code | when |`
// table in "Admin API" lists exactly the (status, code) pairs httpErrors
// (and the 500 for anything unmapped) can answer: a code or a status
// missing on either side fails.
func TestHTTPErrorTableMatchesREADME(t *testing.T) {
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(b), "\n## Admin API\n")
	if !ok {
		t.Fatal(`README: no section "Admin API"`)
	}
	section, _, _ = strings.Cut(section, "\n## ")
	_, table, ok := strings.Cut(section, "\n| status | code | when |\n")
	if !ok {
		t.Fatal("README: no `| status | code | when |` table in \"Admin API\"")
	}
	documented := map[string]bool{}
	for _, line := range strings.Split(table, "\n") {
		if !strings.HasPrefix(line, "|") {
			break
		}
		cells := strings.Split(line, "|")
		if len(cells) < 4 || strings.HasPrefix(strings.TrimSpace(cells[1]), "---") {
			continue
		}
		status, err := strconv.Atoi(strings.TrimSpace(cells[1]))
		code := strings.Trim(strings.TrimSpace(cells[2]), "`")
		if err != nil || code == "" || strings.TrimSpace(cells[3]) == "" {
			t.Errorf("README error table: row %q wants a status, a code and when", line)
			continue
		}
		pair := fmt.Sprintf("%d %s", status, code)
		if documented[pair] {
			t.Errorf("README error table lists %s twice", pair)
		}
		documented[pair] = true
	}
	code := answerable()
	for pair := range code {
		if !documented[pair] {
			t.Errorf("the API answers %s, which the README's error table does not list", pair)
		}
	}
	for pair := range documented {
		if !code[pair] {
			t.Errorf("the README's error table lists %s, which httpErrors does not answer", pair)
		}
	}
}

// TestOpenAPIErrorCodes: the Error response's code enum in openapi.yaml
// is exactly the set of codes the API can answer.
func TestOpenAPIErrorCodes(t *testing.T) {
	var doc struct {
		Components struct {
			Responses map[string]struct {
				Content map[string]struct {
					Schema struct {
						Properties map[string]struct {
							Properties map[string]struct {
								Enum []string `yaml:"enum"`
							} `yaml:"properties"`
						} `yaml:"properties"`
					} `yaml:"schema"`
				} `yaml:"content"`
			} `yaml:"responses"`
		} `yaml:"components"`
	}
	if err := yaml.Unmarshal(OpenAPI, &doc); err != nil {
		t.Fatal(err)
	}
	enum := doc.Components.Responses["Error"].Content["application/json"].Schema.Properties["error"].Properties["code"].Enum
	if len(enum) == 0 {
		t.Fatal("openapi.yaml: components.responses.Error has no enum of error codes")
	}
	codes := map[string]bool{}
	for pair := range answerable() {
		_, code, _ := strings.Cut(pair, " ")
		codes[code] = true
		if !slices.Contains(enum, code) {
			t.Errorf("the API answers code %q, which openapi.yaml's Error enum does not list", code)
		}
	}
	for _, c := range enum {
		if !codes[c] {
			t.Errorf("openapi.yaml's Error enum lists %q, which httpErrors does not answer", c)
		}
	}
}

// handlerStatuses is what each route's handler can answer, read from the
// handlers (as far as can be told without running them): 401 and 500 for
// every route behind the token (a wrong token; a contained panic);
// 400 and 413 where the body is decoded (bad_json, body_too_large); 503
// where the ledger is written (ledger_unavailable once it failed closed)
// or an export streams (busy); 404, 409 and 422 from the ledger's and the
// handler's own refusals; 403 where the route's access column leaves a
// role out (TestForbiddenDocumented holds the two together), and 503 on
// every change (its audit entry could not be written). The routing refusals (404 not_found for an
// unknown path, 405) belong to no operation. PUT /v1/rates' 413 is the
// HTTP server's cap on a deck's size.
var handlerStatuses = map[string][]int{
	"GET /v1/openapi.yaml":          {200, 401, 500},
	"GET /v1/whoami":                {200, 401, 500},
	"POST /v1/orgs":                 {201, 400, 401, 403, 409, 413, 422, 500, 503},
	"GET /v1/orgs/*":                {200, 401, 404, 422, 500, 503}, // 422: scope, advice_at; 503: etcd (cluster pools)
	"PATCH /v1/orgs/*":              {200, 400, 401, 403, 404, 413, 422, 500, 503},
	"POST /v1/orgs/*/credits":       {200, 201, 400, 401, 403, 404, 409, 413, 422, 500, 503},
	"PUT /v1/orgs/*/auto-recharge":  {200, 400, 401, 403, 404, 409, 413, 422, 500, 503},
	"PUT /v1/orgs/*/fraud-guard":    {200, 400, 401, 403, 404, 413, 422, 500, 503},
	"PUT /v1/orgs/*/users/*":        {200, 400, 401, 403, 404, 409, 413, 422, 500, 503},
	"PUT /v1/orgs/*/toll-free/*":    {200, 400, 401, 403, 404, 409, 413, 422, 500, 503},
	"DELETE /v1/orgs/*/toll-free/*": {204, 401, 403, 404, 409, 422, 500, 503},
	"POST /v1/orgs/*/purchases":     {200, 202, 400, 401, 403, 404, 409, 413, 422, 500, 503},
	"GET /v1/orgs/*/purchases/*":    {200, 401, 404, 409, 500},
	"GET /v1/orgs":                  {200, 401, 422, 500},
	"GET /v1/orgs/*/users":          {200, 401, 404, 422, 500},
	"DELETE /v1/orgs/*/users/*":     {204, 401, 403, 404, 409, 500, 503},
	"GET /v1/orgs/*/toll-free":      {200, 401, 404, 422, 500},
	"GET /v1/trunks":                {200, 401, 403, 422, 500},
	"DELETE /v1/trunks/*":           {204, 401, 403, 404, 409, 500, 503},
	"GET /v1/orgs/*/usage":          {200, 400, 401, 404, 422, 500, 503},
	"GET /v1/orgs/*/transactions":   {200, 401, 404, 422, 500},
	"PUT /v1/trunks/*":              {200, 400, 401, 403, 413, 422, 500, 503},
	"PUT /v1/rates":                 {200, 401, 403, 413, 422, 500, 503},
	"GET /v1/rates":                 {200, 401, 403, 404, 422, 500},
	"GET /v1/calls":                 {200, 401, 422, 500},
	"DELETE /v1/calls/*":            {204, 401, 403, 404, 422, 500, 503},
	"GET /v1/keys":                  {200, 401, 422, 500},
	"POST /v1/keys":                 {201, 400, 401, 403, 404, 413, 422, 500, 503},
	"POST /v1/keys/*/rotate":        {200, 401, 403, 404, 422, 500, 503},
	"DELETE /v1/keys/*":             {204, 401, 403, 404, 422, 500, 503},
	"GET /v1/audit":                 {200, 401, 422, 500, 503},
	"GET /metrics":                  {200},
	"GET /healthz":                  {200},
	"GET /readyz":                   {200, 503},
}

// TestOpenAPIStatusesPerOperation: each operation in openapi.yaml lists
// exactly the statuses its handler can answer (handlerStatuses), and every
// route has an entry there.
func TestOpenAPIStatusesPerOperation(t *testing.T) {
	var doc struct {
		Paths map[string]map[string]any `yaml:"paths"`
	}
	if err := yaml.Unmarshal(OpenAPI, &doc); err != nil {
		t.Fatal(err)
	}
	for _, r := range routes {
		if _, ok := handlerStatuses[r.key()]; !ok {
			t.Errorf("route %s %s: no entry in handlerStatuses; read its handler and add one", r.method, r.pattern)
		}
	}
	for p, item := range doc.Paths {
		for m, op := range item {
			if m == "parameters" {
				continue
			}
			key := strings.ToUpper(m) + " " + paramRE.ReplaceAllString(p, "*")
			want, ok := handlerStatuses[key]
			if !ok {
				t.Errorf("openapi.yaml documents %s, which handlerStatuses does not know", key)
				continue
			}
			o, _ := op.(map[string]any)
			responses, _ := o["responses"].(map[string]any)
			var got []int
			for s := range responses {
				n, err := strconv.Atoi(s)
				if err != nil {
					t.Errorf("%s: response %q is not a status", key, s)
					continue
				}
				got = append(got, n)
			}
			slices.Sort(got)
			if !slices.Equal(got, want) {
				t.Errorf("%s: openapi.yaml lists %v, the handler can answer %v", key, got, want)
			}
		}
	}
}

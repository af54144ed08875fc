// Package status is `zeroscaler status`: it reads the annotated workloads
// straight from the Kubernetes API, with no daemon, and tells what
// zeroscaler does with each of them.
package status

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/clock"
)

// Command runs `zeroscaler status`. Its zero value, with Stdout and Stderr
// set, is the real command; tests inject a clock and a client.
type Command struct {
	Stdout, Stderr io.Writer
	// Clock tells the ages in the table; the real clock if nil.
	Clock clock.PassiveClock
	// NewClient builds the API client from the loaded configuration;
	// kubernetes.NewForConfig if nil.
	NewClient func(*rest.Config) (kubernetes.Interface, error)
}

// Exit codes.
const (
	ExitOK    = 0 // the table was printed, whatever the workloads' states
	ExitError = 1 // the API could not be reached or read
	ExitUsage = 2 // bad flags
)

// defaultTimeout bounds each request when --request-timeout is not given,
// so that an API server that does not answer fails the command instead of
// hanging it.
const defaultTimeout = 30 * time.Second

// flags are the command's own flags; the kubeconfig ones live in the
// loading rules and overrides.
type flags struct {
	allNamespaces bool
	selector      string
	output        string
}

// Run runs the command with args (those after "status") and returns its
// exit code.
func (c Command) Run(ctx context.Context, args []string) int {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	overrides := &clientcmd.ConfigOverrides{}
	var f flags
	fs := pflag.NewFlagSet("zeroscaler status", pflag.ContinueOnError)
	fs.SetOutput(c.Stderr)
	fs.Usage = func() {
		fmt.Fprint(c.Stderr, usage)
		fs.PrintDefaults()
	}
	fs.StringVar(&rules.ExplicitPath, "kubeconfig", "", "Path to the kubeconfig file; else $KUBECONFIG, ~/.kube/config, or the pod's service account.")
	clientcmd.BindOverrideFlags(overrides, fs, clientcmd.RecommendedConfigOverrideFlags(""))
	fs.BoolVarP(&f.allNamespaces, "all-namespaces", "A", false, "List workloads in every namespace.")
	fs.StringVarP(&f.selector, "selector", "l", "", "Label selector to filter workloads on, e.g. -l app=web.")
	fs.StringVarP(&f.output, "output", "o", "", "Output format: wide, json or yaml; a table if empty.")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return ExitOK
		}
		return c.fail(ExitUsage, fmt.Errorf("%w (see zeroscaler status --help)", err))
	}
	if fs.NArg() > 0 {
		return c.fail(ExitUsage, fmt.Errorf("unexpected arguments %q; filter with -n, -A or -l", fs.Args()))
	}
	switch f.output {
	case "", "wide", "json", "yaml":
	default:
		return c.fail(ExitUsage, fmt.Errorf("--output %q: must be wide, json or yaml", f.output))
	}

	cc := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, overrides)
	config, err := cc.ClientConfig()
	if err != nil {
		return c.fail(ExitError, fmt.Errorf("load kubeconfig: %w", err))
	}
	namespace, _, err := cc.Namespace()
	if err != nil {
		return c.fail(ExitError, fmt.Errorf("load kubeconfig: %w", err))
	}
	if f.allNamespaces {
		namespace = ""
	}
	if overrides.Timeout == "" || overrides.Timeout == "0" {
		config.Timeout = defaultTimeout
	}
	config.UserAgent = "zeroscaler-status"
	// Built-in types travel as protobuf, as for the daemon: listing
	// thousands of workloads costs a fraction of JSON's CPU.
	config.ContentType = runtime.ContentTypeProtobuf
	config.AcceptContentTypes = runtime.ContentTypeProtobuf + "," + runtime.ContentTypeJSON
	newClient := c.NewClient
	if newClient == nil {
		newClient = func(rc *rest.Config) (kubernetes.Interface, error) { return kubernetes.NewForConfig(rc) }
	}
	client, err := newClient(config)
	if err != nil {
		return c.fail(ExitError, fmt.Errorf("create kubernetes client: %w", err))
	}

	rows, err := Collect(ctx, client, namespace, f.selector)
	if err != nil {
		return c.fail(ExitError, fmt.Errorf("cannot read workloads from the Kubernetes API at %s: %w", config.Host, err))
	}
	events, err := LastEvents(ctx, client, namespace)
	if err != nil {
		// The states are worth having without the events.
		fmt.Fprintln(c.Stderr, oneLine("zeroscaler status: warning: cannot read events; LAST-EVENT is unknown: "+err.Error()))
	}
	for i := range rows {
		rows[i].LastEvent = events.For(rows[i])
	}

	clk := c.Clock
	if clk == nil {
		clk = clock.RealClock{}
	}
	switch f.output {
	case "json":
		err = PrintJSON(c.Stdout, rows)
	case "yaml":
		err = PrintYAML(c.Stdout, rows)
	default:
		if len(rows) == 0 {
			fmt.Fprintln(c.Stderr, noneFound(namespace, f.selector))
			return ExitOK
		}
		err = PrintTable(c.Stdout, rows, TableOptions{Wide: f.output == "wide", Namespace: f.allNamespaces, Now: clk.Now()})
	}
	if err != nil {
		return c.fail(ExitError, fmt.Errorf("write output: %w", err))
	}
	return ExitOK
}

const usage = `Show every Deployment and StatefulSet with zeroscaler.io/ annotations and
what zeroscaler does with it: awake, asleep, paused, invalid or excluded.
Reads the Kubernetes API directly; the daemon need not run.

Usage:
  zeroscaler status [-n NAMESPACE | -A] [-l SELECTOR] [-o wide|json|yaml]

Flags:
`

func (c Command) fail(code int, err error) int {
	fmt.Fprintln(c.Stderr, oneLine("zeroscaler status: "+err.Error()))
	return code
}

// oneLine keeps a message on one line: client errors sometimes carry a
// response body.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

func noneFound(namespace, selector string) string {
	where := "in any namespace"
	if namespace != "" {
		where = "in namespace " + namespace
	}
	if selector != "" {
		where += " matching " + selector
	}
	return "No workloads with zeroscaler.io/ annotations found " + where + "."
}

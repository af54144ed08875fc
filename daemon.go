package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/uuid"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
	"k8s.io/client-go/scale"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/flowcontrol"

	"github.com/zeroscaler/zeroscaler/handler"
	"github.com/zeroscaler/zeroscaler/informer"
	"github.com/zeroscaler/zeroscaler/scaler"
)

// run wires the daemon and runs it until ctx ends.
func run(ctx context.Context, o *options, log *zap.Logger) error {
	restConfig, err := kubeConfig(o.kubeconfig)
	if err != nil {
		return err
	}
	restConfig.QPS, restConfig.Burst = o.kubeAPIQPS, o.kubeAPIBurst
	restConfig.UserAgent = "zeroscaler/" + version
	// Writes to workloads wait for their own limiter, in the handler (see
	// boundWrites): their client does not limit them again.
	writeConfig := rest.CopyConfig(restConfig)
	writeConfig.RateLimiter = flowcontrol.NewFakeAlwaysRateLimiter()

	// Built-in types travel as protobuf: listing and watching thousands of
	// workloads costs a fraction of the CPU that JSON would.
	protoConfig := rest.CopyConfig(restConfig)
	protoConfig.ContentType = runtime.ContentTypeProtobuf
	protoConfig.AcceptContentTypes = runtime.ContentTypeProtobuf + "," + runtime.ContentTypeJSON
	client, err := kubernetes.NewForConfig(protoConfig)
	if err != nil {
		return fmt.Errorf("create kubernetes client: %w", err)
	}
	dynamicClient, err := dynamic.NewForConfig(writeConfig)
	if err != nil {
		return fmt.Errorf("create dynamic client: %w", err)
	}
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(client.Discovery()))
	scaleClient, err := scale.NewForConfig(restConfig, mapper, dynamic.LegacyAPIPathResolverFunc, scale.NewDiscoveryScaleKindResolver(client.Discovery()))
	if err != nil {
		return fmt.Errorf("create scale client: %w", err)
	}

	registry := prometheus.NewRegistry()
	metrics := newMetrics(registry)

	servers, err := scaler.NewServers(o.scalerOptions(metrics.ObserveQuery))
	if err != nil {
		return err
	}

	broadcaster := record.NewBroadcaster(record.WithContext(ctx))
	defer broadcaster.Shutdown()
	broadcaster.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: client.CoreV1().Events("")})
	recorder := broadcaster.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "zeroscaler"})

	inf := informer.New(client, informer.Options{
		Namespace: o.watchNamespace,
		Selector:  o.selector,
		Defaults: informer.Defaults{
			UptimeFilter:    o.uptimeFilter,
			CooldownPeriod:  o.defaultCooldown,
			PollingInterval: o.defaultPolling,
			Servers:         servers,
		},
	})
	var lock *renewals
	if o.leaderElect {
		if lock, err = newRenewals(o, client); err != nil {
			return err
		}
	}
	h := handler.New(boundWrites(o, lock, handler.Options{
		DynamicClient:  dynamicClient,
		ScaleClient:    scaleClient,
		RESTMapper:     mapper,
		EventRecorder:  recorder,
		Lister:         inf,
		Logger:         log,
		WatchNamespace: o.watchNamespace,
		DryRun:         o.dryRun,
		Metrics:        metrics,
		NewDecider: func(c handler.Config) (handler.Decider, error) {
			return scaler.New(servers, c.Metadata, c.CooldownPeriod)
		},
	}))
	if err := inf.WatchNamespaces(ctx); err != nil {
		log.Warn("Namespace annotations are ignored: " + err.Error())
	}
	if err := inf.Notify(h); err != nil {
		return err
	}

	srv, err := serveMetrics(o.metricsAddress, o.profiling, registry, inf.HasSynced, log)
	if err != nil {
		return err
	}
	defer func() {
		shutdownCtx, cancel := context.WithTimeout(context.Background(), metricsShutdownTimeout)
		defer cancel()
		_ = srv.Shutdown(shutdownCtx)
	}()

	// The informers get a context of their own: when leadership is lost, run
	// returns while ctx is still live, and Shutdown waits for them to stop.
	infCtx, stopInformers := context.WithCancel(ctx)
	inf.Start(infCtx)
	defer func() {
		stopInformers()
		inf.Shutdown()
	}()
	if !inf.WaitForCacheSync(infCtx) {
		return ctx.Err()
	}
	log.Info("caches synced; watching workloads",
		zap.String("namespace", o.watchNamespace), zap.String("selector", o.selector),
		zap.String("prometheus", servers.DefaultAddress()), zap.Bool("dryRun", o.dryRun))

	if !o.leaderElect {
		metrics.Leader.Set(1)
		h.Run(ctx)
		return nil
	}
	return lead(ctx, o, lock, log, metrics, h.Run)
}

// boundWrites sets what bounds the handler's writes to workloads. Each
// waits for the client-side rate limiter of --kube-api-qps and -burst
// before its timeout starts, so that a herd of sleeps queues instead of
// timing out. Under leader election (lock not nil), none starts, and none
// is still running, after the last successful renewal of the Lease plus
// --leader-election-renew-deadline.
func boundWrites(o *options, lock *renewals, ho handler.Options) handler.Options {
	ho.WriteLimiter = flowcontrol.NewTokenBucketRateLimiter(o.kubeAPIQPS, o.kubeAPIBurst)
	if lock != nil {
		ho.WriteDeadline = func() time.Time { return lock.deadline(o.renewDeadline) }
	}
	return ho
}

// newMetrics registers everything /metrics serves with reg: the daemon's
// own metrics, and the Go and process collectors.
func newMetrics(reg prometheus.Registerer) *handler.Metrics {
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return handler.NewMetrics(reg)
}

// metricsShutdownTimeout bounds the wait for scrapes in flight at exit.
const metricsShutdownTimeout = 3 * time.Second

// leaseReleaseTimeout bounds the release of the Lease at exit.
const leaseReleaseTimeout = 5 * time.Second

// lead runs work while this replica holds the Lease. It returns when ctx
// ends or when leadership is lost. Either way it stops work and waits for it
// before it releases the Lease, so that on a shutdown no standby acts while
// this one still writes. When leadership is lost the wait does not keep a
// standby out: it takes over once the Lease expires, released or not. What
// keeps the two apart then is that no write runs past the last renewal plus
// the renew deadline (see renewals and handler.Options.WriteDeadline).
func lead(ctx context.Context, o *options, lock *renewals, log *zap.Logger, metrics *handler.Metrics, work func(context.Context)) error {
	id := lock.Identity()
	// The elector does not release the Lease itself: when it fails to renew
	// in time, it would do so at once, while work may still be finishing a
	// write. It gets a context of its own, ended only once work has stopped,
	// so that it keeps renewing while work winds down; the Lease is released
	// below, once both have stopped.
	electCtx, stopElecting := context.WithCancel(context.WithoutCancel(ctx))
	defer stopElecting()
	leading := make(chan context.Context, 1)
	elector, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
		Lock:            lock,
		LeaseDuration:   o.leaseDuration,
		RenewDeadline:   o.renewDeadline,
		RetryPeriod:     o.retryPeriod,
		ReleaseOnCancel: false,
		Name:            o.leaderElectionID,
		Callbacks: leaderelection.LeaderCallbacks{
			OnStartedLeading: func(leadCtx context.Context) { leading <- leadCtx },
			OnStoppedLeading: func() { metrics.Leader.Set(0) },
			OnNewLeader: func(identity string) {
				if identity != id {
					log.Info("standing by; another replica leads", zap.String("leader", identity))
				}
			},
		},
	})
	if err != nil {
		return fmt.Errorf("leader election: %w", err)
	}
	electing := make(chan struct{})
	go func() {
		defer close(electing)
		elector.Run(electCtx)
	}()

	lost := false
	select {
	case <-ctx.Done():
	case <-electing:
		lost = true
	case leadCtx := <-leading:
		log.Info("became leader; starting workload loops", zap.String("identity", id))
		metrics.Leader.Set(1)
		workCtx, cancel := context.WithCancel(leadCtx)
		stop := context.AfterFunc(ctx, cancel)
		work(workCtx)
		stop()
		cancel()
		metrics.Leader.Set(0)
		lost = ctx.Err() == nil
		log.Info("workload loops stopped; releasing the lease", zap.Bool("lostLeadership", lost))
	}
	stopElecting()
	<-electing
	// Released on every path: the elector may have taken the Lease just as
	// ctx ended, before work started.
	releaseCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), leaseReleaseTimeout)
	defer cancel()
	if released, err := releaseLease(releaseCtx, lock.Interface, id); err != nil {
		log.Warn("could not release the lease; a standby takes over once it expires", zap.String("lease", lock.Describe()), zap.Error(err))
	} else if released {
		log.Info("released the lease", zap.String("lease", lock.Describe()))
	}
	if lost {
		return errors.New("lost leadership; exiting so that a fresh start can stand by")
	}
	return nil
}

// renewals is the Lease lock, remembering when the last acquire or renewal
// that succeeded was sent. A standby takes over only once it has seen the
// Lease unchanged for the lease duration, counted from a moment after that
// renewal reached the API server; the elector itself gives up leading once
// it failed to renew for the renew deadline, which is shorter. So writes
// that start and end before the last renewal plus the renew deadline never
// overlap a new leader's, whatever the network did to the renewals since,
// as long as a standby's read of the Lease takes less than the difference
// (5s with the default 15s and 10s): the standby stamps what it observed
// with the time before its read.
type renewals struct {
	resourcelock.Interface
	mu   sync.Mutex
	sent time.Time
}

func newRenewals(o *options, client kubernetes.Interface) (*renewals, error) {
	host, _ := os.Hostname()
	id := host + "_" + string(uuid.NewUUID())
	lock, err := resourcelock.New(resourcelock.LeasesResourceLock, o.leaderElectionNS, o.leaderElectionID,
		client.CoreV1(), client.CoordinationV1(), resourcelock.ResourceLockConfig{Identity: id})
	if err != nil {
		return nil, fmt.Errorf("create lease lock: %w", err)
	}
	return &renewals{Interface: lock}, nil
}

func (r *renewals) Create(ctx context.Context, rec resourcelock.LeaderElectionRecord) error {
	return r.track(func() error { return r.Interface.Create(ctx, rec) })
}

func (r *renewals) Update(ctx context.Context, rec resourcelock.LeaderElectionRecord) error {
	return r.track(func() error { return r.Interface.Update(ctx, rec) })
}

func (r *renewals) track(write func() error) error {
	sent := time.Now()
	err := write()
	if err == nil {
		r.mu.Lock()
		r.sent = sent
		r.mu.Unlock()
	}
	return err
}

// deadline is the moment after which writes must not run: the last
// successful renewal's sending plus renewDeadline. Before the first
// renewal it is in the past.
func (r *renewals) deadline(renewDeadline time.Duration) time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.sent.IsZero() {
		return time.Time{}
	}
	return r.sent.Add(renewDeadline)
}

// releaseLease gives up the Lease behind lock if id still holds it, so that a
// standby takes over at once instead of waiting for it to expire, and reports
// whether it did. A Lease that is missing or held by another replica is left
// alone. The update carries the resourceVersion of the Lease that lock read,
// so if another replica writes the Lease in between, the update fails with a
// conflict and that replica's record stands.
func releaseLease(ctx context.Context, lock resourcelock.Interface, id string) (bool, error) {
	old, _, err := lock.Get(ctx)
	if apierrors.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("get lease: %w", err)
	}
	if old.HolderIdentity != id {
		return false, nil
	}
	now := metav1.Now()
	err = lock.Update(ctx, resourcelock.LeaderElectionRecord{
		LeaseDurationSeconds: 1,
		LeaderTransitions:    old.LeaderTransitions,
		AcquireTime:          now,
		RenewTime:            now,
	})
	if err != nil {
		return false, fmt.Errorf("update lease: %w", err)
	}
	return true, nil
}

func kubeConfig(path string) (*rest.Config, error) {
	if path == "" {
		if c, err := rest.InClusterConfig(); err == nil {
			return c, nil
		}
	}
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = path
	c, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, nil).ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("load kubeconfig: %w", err)
	}
	return c, nil
}

// serveMetrics serves /metrics, /healthz and /readyz (and, with profiling,
// /debug/pprof/) in the background.
func serveMetrics(addr string, profiling bool, reg *prometheus.Registry, ready func() bool, log *zap.Logger) (*http.Server, error) {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !ready() {
			http.Error(w, "caches not synced", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	if profiling {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	if addr == "" {
		return srv, nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen on --metrics-address: %w", err)
	}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server stopped", zap.Error(err))
		}
	}()
	return srv, nil
}

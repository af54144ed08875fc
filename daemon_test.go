package main

import (
	"context"
	"errors"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	ktesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
	"k8s.io/utils/ptr"

	"github.com/zeroscaler/zeroscaler/handler"
)

const (
	testLeaseNS   = "zeroscaler-system"
	testLeaseName = "zeroscaler"
	testID        = "zeroscaler-0_ours"
)

var leasesResource = coordinationv1.SchemeGroupVersion.WithResource("leases")

func TestReleaseLease(t *testing.T) {
	tests := []struct {
		name string
		// lease is the stored Lease; nil for none.
		lease *coordinationv1.Lease
		// takeover, if set, is written by another replica right after
		// releaseLease reads the Lease.
		takeover     *coordinationv1.Lease
		wantReleased bool
		wantConflict bool
		wantVerbs    []string
		// want checks the stored Lease afterwards; nil means there is none.
		want func(t *testing.T, got *coordinationv1.Lease)
	}{
		{
			name:         "held by us",
			lease:        testLease(testID, 3),
			wantReleased: true,
			wantVerbs:    []string{"get", "update"},
			want: func(t *testing.T, got *coordinationv1.Lease) {
				if h := ptr.Deref(got.Spec.HolderIdentity, ""); h != "" {
					t.Errorf("holderIdentity = %q, want empty", h)
				}
				if d := ptr.Deref(got.Spec.LeaseDurationSeconds, 0); d != 1 {
					t.Errorf("leaseDurationSeconds = %d, want 1", d)
				}
				if n := ptr.Deref(got.Spec.LeaseTransitions, 0); n != 3 {
					t.Errorf("leaseTransitions = %d, want 3", n)
				}
				for name, ts := range map[string]*metav1.MicroTime{"renewTime": got.Spec.RenewTime, "acquireTime": got.Spec.AcquireTime} {
					if ts == nil || time.Since(ts.Time) > time.Minute {
						t.Errorf("%s = %v, want now", name, ts)
					}
				}
			},
		},
		{
			name:      "held by another replica",
			lease:     testLease("zeroscaler-1_theirs", 3),
			wantVerbs: []string{"get"},
			want:      wantSpec(testLease("zeroscaler-1_theirs", 3).Spec),
		},
		{
			name:         "taken over between read and update",
			lease:        testLease(testID, 3),
			takeover:     testLease("zeroscaler-1_theirs", 4),
			wantConflict: true,
			wantVerbs:    []string{"get", "update"},
			want:         wantSpec(testLease("zeroscaler-1_theirs", 4).Spec),
		},
		{
			name:      "no lease",
			wantVerbs: []string{"get"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cs := fake.NewSimpleClientset()
			if tt.lease != nil {
				if err := cs.Tracker().Add(tt.lease); err != nil {
					t.Fatal(err)
				}
			}
			checkResourceVersion(cs)
			if tt.takeover != nil {
				writeAfterFirstGet(cs, tt.takeover)
			}
			lock, err := resourcelock.New(resourcelock.LeasesResourceLock, testLeaseNS, testLeaseName,
				cs.CoreV1(), cs.CoordinationV1(), resourcelock.ResourceLockConfig{Identity: testID})
			if err != nil {
				t.Fatal(err)
			}

			released, err := releaseLease(context.Background(), lock, testID)

			if tt.wantConflict {
				if !apierrors.IsConflict(err) {
					t.Errorf("releaseLease() error = %v, want a conflict", err)
				}
			} else if err != nil {
				t.Errorf("releaseLease() error = %v", err)
			}
			if released != tt.wantReleased {
				t.Errorf("releaseLease() released = %t, want %t", released, tt.wantReleased)
			}
			var verbs []string
			for _, a := range cs.Actions() {
				verbs = append(verbs, a.GetVerb())
			}
			if !equality.Semantic.DeepEqual(verbs, tt.wantVerbs) {
				t.Errorf("actions = %v, want %v", verbs, tt.wantVerbs)
			}
			obj, err := cs.Tracker().Get(leasesResource, testLeaseNS, testLeaseName)
			switch {
			case tt.want == nil && !apierrors.IsNotFound(err):
				t.Errorf("stored lease: %v, %v; want none", obj, err)
			case tt.want != nil && err != nil:
				t.Errorf("get stored lease: %v", err)
			case tt.want != nil:
				tt.want(t, obj.(*coordinationv1.Lease))
			}
		})
	}
}

// testLease returns a Lease held by holder.
func testLease(holder string, transitions int32) *coordinationv1.Lease {
	acquired := metav1.NewMicroTime(time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC))
	return &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{Namespace: testLeaseNS, Name: testLeaseName, ResourceVersion: "1"},
		Spec: coordinationv1.LeaseSpec{
			HolderIdentity:       ptr.To(holder),
			LeaseDurationSeconds: ptr.To[int32](15),
			AcquireTime:          &acquired,
			RenewTime:            &acquired,
			LeaseTransitions:     ptr.To(transitions),
		},
	}
}

// wantSpec checks that the stored Lease has exactly spec.
func wantSpec(spec coordinationv1.LeaseSpec) func(*testing.T, *coordinationv1.Lease) {
	return func(t *testing.T, got *coordinationv1.Lease) {
		if !equality.Semantic.DeepEqual(got.Spec, spec) {
			t.Errorf("stored lease spec = %v, want %v", &got.Spec, &spec)
		}
	}
}

// checkResourceVersion makes Lease updates on cs behave as the API server's
// do, which the fake tracker does not: an update carrying a resourceVersion
// other than the stored one fails with a conflict, and a stored update gets a
// new resourceVersion.
func checkResourceVersion(cs *fake.Clientset) {
	cs.PrependReactor("update", "leases", func(action ktesting.Action) (bool, runtime.Object, error) {
		lease := action.(ktesting.UpdateAction).GetObject().(*coordinationv1.Lease).DeepCopy()
		stored, err := cs.Tracker().Get(leasesResource, lease.Namespace, lease.Name)
		if err != nil {
			return true, nil, err
		}
		if rv := stored.(*coordinationv1.Lease).ResourceVersion; lease.ResourceVersion != "" && lease.ResourceVersion != rv {
			return true, nil, apierrors.NewConflict(leasesResource.GroupResource(), lease.Name,
				errors.New("the object has been modified; please apply your changes to the latest version and try again"))
		}
		if err := storeLease(cs, lease); err != nil {
			return true, nil, err
		}
		return true, lease, nil
	})
}

// writeAfterFirstGet makes another replica write lease to cs right after the
// first Lease get has read the stored one.
func writeAfterFirstGet(cs *fake.Clientset, lease *coordinationv1.Lease) {
	written := false
	cs.PrependReactor("get", "leases", func(action ktesting.Action) (bool, runtime.Object, error) {
		if written {
			return false, nil, nil
		}
		written = true
		a := action.(ktesting.GetAction)
		read, err := cs.Tracker().Get(leasesResource, a.GetNamespace(), a.GetName())
		if err != nil {
			return true, nil, err
		}
		return true, read, storeLease(cs, lease.DeepCopy())
	})
}

// storeLease stores lease in cs's tracker with the next resourceVersion.
func storeLease(cs *fake.Clientset, lease *coordinationv1.Lease) error {
	stored, err := cs.Tracker().Get(leasesResource, lease.Namespace, lease.Name)
	if err != nil {
		return err
	}
	rv, err := strconv.Atoi(stored.(*coordinationv1.Lease).ResourceVersion)
	if err != nil {
		return err
	}
	lease.ResourceVersion = strconv.Itoa(rv + 1)
	return cs.Tracker().Update(leasesResource, lease, lease.Namespace)
}

// Item 11 of the hardening issue: a leader whose renewals stop getting
// through stops writing before a standby can take over. The Lease is taken
// away from the leader mid-term (its renewals fail, as in a partition); the
// moment after which it may no longer write must come before the standby
// starts leading.
func TestWritesEndBeforeAStandbyLeads(t *testing.T) {
	const (
		// Whole seconds: the Lease records its duration in seconds. A
		// standby stamps what it observed with the time before its read,
		// so the margin (lease duration - renew deadline) must exceed a
		// read's latency: 5s by default, 2s here.
		leaseDuration = 3 * time.Second
		renewDeadline = time.Second
		retryPeriod   = 200 * time.Millisecond
	)
	cs := fake.NewSimpleClientset()
	o := &options{leaderElectionNS: testLeaseNS, leaderElectionID: testLeaseName}
	ours, err := newRenewals(o, cs)
	if err != nil {
		t.Fatal(err)
	}
	if d := ours.deadline(renewDeadline); !d.IsZero() {
		t.Fatalf("deadline before the first renewal = %v, want none", d)
	}
	theirs, err := resourcelock.New(resourcelock.LeasesResourceLock, testLeaseNS, testLeaseName,
		cs.CoreV1(), cs.CoordinationV1(), resourcelock.ResourceLockConfig{Identity: "standby"})
	if err != nil {
		t.Fatal(err)
	}
	var partitioned atomic.Bool
	cs.PrependReactor("update", "leases", func(a ktesting.Action) (bool, runtime.Object, error) {
		l := a.(ktesting.UpdateAction).GetObject().(*coordinationv1.Lease)
		if partitioned.Load() && ptr.Deref(l.Spec.HolderIdentity, "") == ours.Identity() {
			return true, nil, errors.New("connection reset by peer")
		}
		return false, nil, nil
	})

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ledAt := make(chan time.Time, 2)
	elect := func(lock resourcelock.Interface) {
		le, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
			Lock: lock, LeaseDuration: leaseDuration, RenewDeadline: renewDeadline, RetryPeriod: retryPeriod,
			Callbacks: leaderelection.LeaderCallbacks{
				OnStartedLeading: func(context.Context) { ledAt <- time.Now() },
				OnStoppedLeading: func() {},
			},
		})
		if err != nil {
			t.Error(err)
			return
		}
		go le.Run(ctx)
	}
	elect(ours)
	select {
	case <-ledAt:
	case <-time.After(10 * time.Second):
		t.Fatal("never led")
	}
	elect(theirs)
	time.Sleep(3 * retryPeriod) // a few renewals get through
	if d := ours.deadline(renewDeadline); !d.After(time.Now()) {
		t.Fatalf("deadline %v while renewing, want it ahead", d)
	}
	partitioned.Store(true)
	var standbyLed time.Time
	select {
	case standbyLed = <-ledAt:
	case <-time.After(10 * time.Second):
		t.Fatal("the standby never took over")
	}
	last := ours.deadline(renewDeadline)
	if !last.Before(standbyLed) {
		t.Errorf("writes allowed until %v, after the standby began leading at %v", last.Format(time.StampMilli), standbyLed.Format(time.StampMilli))
	}
}

// boundWrites is what ties the handler's writes to the Lease and to the
// client-side limiter (issues 9 item 11 and 13 item 2): under leader
// election the handler's deadline is the last renewal plus the renew
// deadline, and without it there is none.
func TestBoundWrites(t *testing.T) {
	o := &options{kubeAPIQPS: 7, kubeAPIBurst: 9, renewDeadline: 10 * time.Second}
	lock := &renewals{}

	ho := boundWrites(o, lock, handler.Options{})
	if ho.WriteLimiter == nil || ho.WriteLimiter.QPS() != 7 {
		t.Fatalf("write limiter = %v, want one at --kube-api-qps 7", ho.WriteLimiter)
	}
	if ho.WriteDeadline == nil {
		t.Fatal("no write deadline under leader election")
	}
	if d := ho.WriteDeadline(); !d.IsZero() {
		t.Errorf("deadline before the first renewal = %v, want the zero time (no write may start)", d)
	}
	sent := time.Now().Add(-3 * time.Second)
	lock.mu.Lock()
	lock.sent = sent
	lock.mu.Unlock()
	if got, want := ho.WriteDeadline(), sent.Add(o.renewDeadline); !got.Equal(want) {
		t.Errorf("deadline = %v, want the last renewal plus the renew deadline, %v", got, want)
	}

	if ho := boundWrites(o, nil, handler.Options{}); ho.WriteDeadline != nil {
		t.Error("a write deadline without leader election")
	}
}

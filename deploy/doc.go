// Package deploy holds pacsflow's deployment: the Helm chart (helm/pacsflow) and the container
// images' Dockerfiles (docker/). It has no Go code; its test (deploy_test.go) lints and renders
// the chart with helm, decodes the rendered manifests strictly into the Kubernetes API types,
// checks what they must hold, and checks that the
// Dockerfiles build what the chart runs.
package deploy

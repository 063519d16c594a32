module github.com/pacsflow/pacsflow

go 1.26

require (
	github.com/grailbio/go-dicom v0.0.0-20211105193521-b0e216a1c5cd
	github.com/suyashkumar/dicom v1.1.0
)

require (
	github.com/gobwas/glob v0.0.0-20170212200151-51eb1ee00b6d // indirect
	golang.org/x/exp v0.0.0-20240525044651-4c93da0ed11d // indirect
	golang.org/x/text v0.3.8 // indirect
)

module local/traceparent

go 1.19

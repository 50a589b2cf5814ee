module local/etcdpeer

go 1.19

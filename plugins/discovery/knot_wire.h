// The parts of libknot (Knot DNS's wire-format library) this plugin uses.
// libknot's headers carry no extern "C" guard of their own.
#pragma once

extern "C" {
#include <libknot/consts.h>
#include <libknot/descriptor.h>
#include <libknot/dname.h>
#include <libknot/errcode.h>
#include <libknot/packet/pkt.h>
#include <libknot/packet/wire.h>
#include <libknot/rdata.h>
#include <libknot/rdataset.h>
#include <libknot/rrset.h>
#include <libknot/rrtype/opt.h>
#include <libknot/wire.h>
}

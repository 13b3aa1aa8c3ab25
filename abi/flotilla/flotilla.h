/* flotilla/flotilla.h — everything a plugin may include, in one header. */
#ifndef FLOTILLA_FLOTILLA_H
#define FLOTILLA_FLOTILLA_H
#include "version.h"
#include "types.h"
#include "host.h"
#include "entry.h"
#include "store.h"
#include "runtime.h"
#include "network.h"
#include "security.h"
#include "discovery.h"
#include "scheduler.h"
#endif

/* loom: a rank-level distributed training runtime. The one header users include; nothing
 * inside the library includes it. */
#ifndef LOOM_H
#define LOOM_H

#define LOOM_VERSION "0.1.0"

#include "runtime/status.h"
#include "runtime/dtype.h"
#include "runtime/config.h"
#include "runtime/log.h"
#include "runtime/rng.h"
#include "runtime/req.h"
#include "runtime/ctx.h"
#include "runtime/group.h"
#include "runtime/mesh.h"
#include "runtime/device.h"
#include "runtime/stream.h"
#include "runtime/state.h"
#include "runtime/params.h"
#include "runtime/loop.h"
#include "runtime/fault.h"
#include "runtime/signals.h"
#include "collectives/coll.h"
#include "collectives/sparse.h"
#include "optim/optim.h"
#include "optim/schedule.h"
#include "optim/clip.h"
#include "parallel/ddp.h"
#include "checkpoint/ckpt.h"
#include "checkpoint/inspect.h"
#include "checkpoint/snapshot.h"
#include "checkpoint/keeper.h"

#endif

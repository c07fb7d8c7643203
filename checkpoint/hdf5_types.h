/* How loom dtypes are stored in HDF5 (private to checkpoint/): native types, and bfloat16 /
 * float16 as raw 16-bit words with the dtype named in the dataset's loom_dtype attribute. */
#ifndef LOOM_CHECKPOINT_HDF5_TYPES_H
#define LOOM_CHECKPOINT_HDF5_TYPES_H

#include <hdf5.h>

#include "runtime/dtype.h"

static inline hid_t loom_hdf5_type(loom_dtype dtype) {
  switch (dtype) {
    case LOOM_FLOAT32: return H5T_NATIVE_FLOAT;
    case LOOM_FLOAT64: return H5T_NATIVE_DOUBLE;
    case LOOM_INT32: return H5T_NATIVE_INT32;
    case LOOM_INT64: return H5T_NATIVE_INT64;
    case LOOM_UINT8: return H5T_NATIVE_UINT8;
    default: return H5T_NATIVE_UINT16; /* bfloat16, float16: raw bits */
  }
}

#endif

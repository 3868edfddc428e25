/* faiss_c.cpp — the part of the Faiss C API that recall calls, written against the C++ API.
 *
 * Debian's libfaiss-dev (1.7.3) ships the C API headers but only the C++ library (a static
 * libfaiss.a): none of the compiled c_api objects. recall's C code includes only the C API
 * headers, so this file supplies exactly the functions it uses, with the headers' names and
 * signatures (each is a thin wrapper, as in Faiss's own c_api sources), and the build links it
 * only when no real libfaiss_c is installed (memory/CMakeLists.txt). Return codes follow
 * error_c.h: 0, or -2 / -4 / -1 for a Faiss / std / unknown exception, whose message
 * faiss_get_last_error() then returns (per thread). */
#include <faiss/Clustering.h>
#include <faiss/IndexFlat.h>
#include <faiss/impl/FaissException.h>
#include <faiss/impl/IDSelector.h>
#include <faiss/index_io.h>

#include <cstdio>
#include <exception>
#include <string>

extern "C" {
#include <faiss/c_api/Clustering_c.h>
#include <faiss/c_api/IndexFlat_c.h>
#include <faiss/c_api/Index_c.h>
#include <faiss/c_api/error_c.h>
#include <faiss/c_api/impl/AuxIndexStructures_c.h>
#include <faiss/c_api/index_io_c.h>
}

namespace {
thread_local std::string last_error;

/* Runs f, turning exceptions into the C API's codes. */
template <typename F> int guard(F &&f)
{
    try {
        f();
        return 0;
    } catch (faiss::FaissException &e) {
        last_error = e.what();
        return -2;
    } catch (std::exception &e) {
        last_error = e.what();
        return -4;
    } catch (...) {
        last_error = "Unknown error";
        return -1;
    }
}

faiss::Index *IX(FaissIndex *p) { return reinterpret_cast<faiss::Index *>(p); }
const faiss::Index *IX(const FaissIndex *p) { return reinterpret_cast<const faiss::Index *>(p); }
} // namespace

extern "C" {

const char *faiss_get_last_error() { return last_error.empty() ? nullptr : last_error.c_str(); }

/* ---- Index ------------------------------------------------------------------------------ */

void faiss_Index_free(FaissIndex *obj) { delete IX(obj); }
int faiss_Index_d(const FaissIndex *obj) { return (int)IX(obj)->d; }
idx_t faiss_Index_ntotal(const FaissIndex *obj) { return IX(obj)->ntotal; }

int faiss_Index_add(FaissIndex *index, idx_t n, const float *x)
{
    return guard([&] { IX(index)->add(n, x); });
}

int faiss_Index_search(const FaissIndex *index, idx_t n, const float *x, idx_t k,
                       float *distances, idx_t *labels)
{
    return guard([&] { IX(index)->search(n, x, k, distances, labels); });
}

int faiss_Index_remove_ids(FaissIndex *index, const FaissIDSelector *sel, size_t *n_removed)
{
    return guard([&] {
        size_t n = IX(index)->remove_ids(*reinterpret_cast<const faiss::IDSelector *>(sel));
        if (n_removed) *n_removed = n;
    });
}

/* ---- the flat index ------------------------------------------------------------------ */

int faiss_IndexFlatIP_new_with(FaissIndexFlatIP **p_index, idx_t d)
{
    return guard([&] {
        *p_index = reinterpret_cast<FaissIndexFlatIP *>(new faiss::IndexFlatIP(d));
    });
}


/* ---- clustering (the coarse quantizer's training, with recall's parameters) -------------- */

void faiss_ClusteringParameters_init(FaissClusteringParameters *params)
{
    faiss::ClusteringParameters d;
    params->niter = d.niter;
    params->nredo = d.nredo;
    params->verbose = d.verbose;
    params->spherical = d.spherical;
    params->int_centroids = d.int_centroids;
    params->update_index = d.update_index;
    params->frozen_centroids = d.frozen_centroids;
    params->min_points_per_centroid = d.min_points_per_centroid;
    params->max_points_per_centroid = d.max_points_per_centroid;
    params->seed = d.seed;
    params->decode_block_size = d.decode_block_size;
}

int faiss_Clustering_new_with_params(FaissClustering **p_clustering, int d, int k,
                                     const FaissClusteringParameters *cp)
{
    return guard([&] {
        faiss::ClusteringParameters p;
        p.niter = cp->niter;
        p.nredo = cp->nredo;
        p.verbose = cp->verbose;
        p.spherical = cp->spherical;
        p.int_centroids = cp->int_centroids;
        p.update_index = cp->update_index;
        p.frozen_centroids = cp->frozen_centroids;
        p.min_points_per_centroid = cp->min_points_per_centroid;
        p.max_points_per_centroid = cp->max_points_per_centroid;
        p.seed = cp->seed;
        p.decode_block_size = cp->decode_block_size;
        *p_clustering = reinterpret_cast<FaissClustering *>(new faiss::Clustering(d, k, p));
    });
}

int faiss_Clustering_train(FaissClustering *clustering, idx_t n, const float *x,
                           FaissIndex *index)
{
    return guard([&] { reinterpret_cast<faiss::Clustering *>(clustering)->train(n, x, *IX(index)); });
}

void faiss_Clustering_centroids(FaissClustering *clustering, float **centroids, size_t *size)
{
    std::vector<float> &c = reinterpret_cast<faiss::Clustering *>(clustering)->centroids;
    if (centroids) *centroids = c.data();
    if (size) *size = c.size();
}

void faiss_Clustering_free(FaissClustering *clustering)
{
    delete reinterpret_cast<faiss::Clustering *>(clustering);
}

/* ---- id selectors ------------------------------------------------------------------------ */

int faiss_IDSelectorRange_new(FaissIDSelectorRange **p_sel, idx_t imin, idx_t imax)
{
    return guard([&] {
        *p_sel = reinterpret_cast<FaissIDSelectorRange *>(new faiss::IDSelectorRange(imin, imax));
    });
}
void faiss_IDSelectorRange_free(FaissIDSelectorRange *obj)
{
    delete reinterpret_cast<faiss::IDSelectorRange *>(obj);
}

/* ---- serialization (through stdio streams, so fmemopen / open_memstream work) ----------- */

int faiss_write_index(const FaissIndex *idx, FILE *f)
{
    return guard([&] { faiss::write_index(IX(idx), f); });
}

int faiss_read_index(FILE *f, int io_flags, FaissIndex **p_out)
{
    return guard([&] { *p_out = reinterpret_cast<FaissIndex *>(faiss::read_index(f, io_flags)); });
}

} /* extern "C" */

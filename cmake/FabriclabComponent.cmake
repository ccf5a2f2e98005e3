# fabriclab_component(<name> [STATIC] SOURCES <src>... [PUBLIC <lib>...] [PRIVATE <lib>...])
#
# One component library: fabriclab_<name>, used by the rest of the tree only as its alias
# fabriclab::<name>, with the component's include/ folder as its public headers. PUBLIC and
# PRIVATE are its link dependencies as target_link_libraries reads them (PRIVATE ones stay out of
# the component's interface, e.g. libvirt behind hypervisor). STATIC forces a static archive
# whatever BUILD_SHARED_LIBS says (the guest program links such components statically). Anything
# else a component needs (generated headers, compile definitions) its CMakeLists adds to
# fabriclab_<name> after the call.
function(fabriclab_component name)
  cmake_parse_arguments(PARSE_ARGV 1 arg "STATIC" "" "SOURCES;PUBLIC;PRIVATE")
  if(arg_UNPARSED_ARGUMENTS OR NOT arg_SOURCES)
    message(FATAL_ERROR "fabriclab_component(${name}): needs SOURCES, got '${arg_UNPARSED_ARGUMENTS}'")
  endif()
  set(type "")
  if(arg_STATIC)
    set(type STATIC)
  endif()
  add_library(fabriclab_${name} ${type} ${arg_SOURCES})
  add_library(fabriclab::${name} ALIAS fabriclab_${name})
  target_include_directories(fabriclab_${name} PUBLIC ${CMAKE_CURRENT_SOURCE_DIR}/include)
  if(arg_PUBLIC OR arg_PRIVATE)
    target_link_libraries(fabriclab_${name} PUBLIC ${arg_PUBLIC} PRIVATE ${arg_PRIVATE})
  endif()
endfunction()

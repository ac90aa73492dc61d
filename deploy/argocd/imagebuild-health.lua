-- Argo CD health check for stagecoach.dev/ImageBuild (resource.customizations.health in
-- argocd-cm; docs/gitops.md). Progressing while the build runs or while the status still
-- describes an older spec than metadata.generation; Healthy when the Succeeded condition is
-- True; Degraded, with the reason and message, when it is False.
local hs = {}
local generation = obj.metadata and obj.metadata.generation
local status = obj.status
if status == nil or status.conditions == nil then
  hs.status = "Progressing"
  hs.message = "waiting for the Stagecoach controller"
  return hs
end
if generation ~= nil and (status.observedGeneration == nil or status.observedGeneration < generation) then
  hs.status = "Progressing"
  hs.message = "waiting for the controller to build generation " .. tostring(generation)
  return hs
end
for _, condition in ipairs(status.conditions) do
  if condition.type == "Succeeded" then
    local text = (condition.reason or "") .. ": " .. (condition.message or "")
    if condition.observedGeneration ~= nil and generation ~= nil
        and condition.observedGeneration < generation then
      hs.status = "Progressing"
      hs.message = "waiting for the controller to build generation " .. tostring(generation)
    elseif condition.status == "True" then
      hs.status = "Healthy"
      hs.message = text
    elseif condition.status == "False" then
      hs.status = "Degraded"
      hs.message = text
    else
      hs.status = "Progressing"
      hs.message = text
    end
    return hs
  end
end
hs.status = "Progressing"
hs.message = "waiting for the Succeeded condition"
return hs
